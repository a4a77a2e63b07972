"""``unroll-compress``: a trained run's dense maps as butterfly / Monarch layers. The structured maps
are the factorizations of the trained matrices (computed here with ``factorize`` / the padding of
the layers), the dense evaluation is the run's own, exactly representable matrices lose nothing,
parameter counts are the tensors' sizes, the ML-ISTA classifier is compressed, bad input is one line
and exit code 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import read_metrics, run_cli, tiny
from test_classification_run import tiny_ml_ista_run
from test_structured_operators import hadamard
from unroll_cli.models.butterfly import factorize
from unroll_cli.compress import main as compress_main
from unroll_cli.run import build_model, build_task

pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: see conftest
CPU = torch.device("cpu")


def compress_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``unroll-compress ARGS`` through its console-script function, in the environment of ``run_cli``."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", "from unroll_cli.cli import compress_main; compress_main()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def train(run_dir: Path, *overrides: str) -> dict:
    result = run_cli([*tiny(*overrides), "tensorboard=false", f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    return read_metrics(run_dir)


def compressed(run_dir: Path, structure: str) -> tuple[dict, dict, torch.nn.Module]:
    """Run ``unroll-compress``; its compress.json, the run's best.pt weights, and the compressed model
    rebuilt from the config saved beside it (``model.operator=<structure>``) with its saved weights."""
    result = compress_cli([str(run_dir), "--structure", structure], cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    out = run_dir / f"compressed_{structure}"
    record = json.loads((out / "compress.json").read_text())
    assert (out / "compress.md").read_text() in result.stdout
    saved = torch.load(out / structure / "model.pt", weights_only=True)
    cfg = OmegaConf.create(saved["config"])
    assert cfg.model.operator == structure
    model = build_model(cfg.model, build_task(cfg, CPU))
    model.load_state_dict(saved["model"])  # strict: the same model with operator=<structure>
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    return record, best, model


def butterfly_projection(matrix: torch.Tensor) -> torch.Tensor:
    """The layers' padding done by hand: columns zero-padded to a power of two p, rows to whole
    p x p stacks, each stack factorized on its own, the result cut back to the matrix's shape."""
    rows, cols = matrix.shape
    p = 1 << (cols - 1).bit_length()
    stacks = -(-rows // p)
    padded = torch.zeros(stacks * p, p, dtype=torch.float64)
    padded[:rows, :cols] = matrix.double()
    blocks = [factorize(padded[i * p:(i + 1) * p]).dense_matrix().double() for i in range(stacks)]
    return torch.cat(blocks)[:rows, :cols]


def relative_error(approx: torch.Tensor, target: torch.Tensor) -> float:
    return ((approx.double() - target.double()).norm() / target.double().norm()).item()


@pytest.fixture(scope="module")
def lista_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lista") / "run"
    return run_dir, train(run_dir, "model=lista", "data.m=16", "data.n=32")


@pytest.mark.slow
def test_lista_butterfly_maps_are_the_factorizations_of_the_trained_matrices(lista_run):
    run_dir, run = lista_run
    record, best, model = compressed(run_dir, "butterfly")
    assert record["run"] == str(run_dir.resolve()) and record["model"] == "lista"
    assert record["primary_metric"] == "test/nmse_db"
    # the dense model evaluated by unroll-compress is the one the run reported
    assert record["models"]["dense"]["primary"] == pytest.approx(run["metrics"]["test/nmse_db"], abs=1e-9)
    assert record["models"]["dense"]["params"] == run["params"]

    W, B = best["W"], best["B"]
    expected = {"W": butterfly_projection(W), "B": butterfly_projection(B)}
    maps = {row["map"]: row for row in record["maps"]}
    assert set(maps) == {"W", "B"}
    for name, matrix, layer in (("W", W, model.W), ("B", B, model.B)):
        torch.testing.assert_close(layer.dense_matrix().double(), expected[name], rtol=0, atol=1e-5)
        assert maps[name]["shape"] == list(matrix.shape)
        assert maps[name]["relative_error"] == pytest.approx(relative_error(expected[name], matrix), rel=1e-4)
        assert maps[name]["dense_params"] == matrix.numel()
        assert maps[name]["butterfly_params"] == sum(p.numel() for p in layer.parameters())
    assert 0 < maps["W"]["relative_error"] < 1  # a trained matrix is no butterfly, but near one
    torch.testing.assert_close(model.theta[0], best["theta.0"])  # the thresholds as trained

    structured = record["models"]["butterfly"]
    trainable = [key for key in model.state_dict() if key != "A"]  # A is a buffer
    assert structured["params"] == sum(model.state_dict()[key].numel() for key in trainable)
    assert structured["map_params"] == maps["W"]["butterfly_params"] + maps["B"]["butterfly_params"]
    assert record["models"]["dense"]["map_params"] == W.numel() + B.numel()
    assert structured["params"] < record["models"]["dense"]["params"]
    for label in ("dense", "butterfly"):  # each model's report, by the task
        layers = (run_dir / "compressed_butterfly" / label / "layers.csv").read_text().splitlines()
        assert len(layers) == 1 + 1 + 4  # header, layer 0 (x = 0), 4 layers
        assert not (run_dir / "compressed_butterfly" / label / "metrics.json").exists()  # not a run


@pytest.fixture(scope="module")
def hadamard_run(tmp_path_factory):
    """LISTA on A = the first 8 rows of H_16 / sqrt(8), whose ISTA matrices are butterfly and Monarch
    matrices (test_structured_operators), trained with so small a step that they stay ISTA's."""
    folder = tmp_path_factory.mktemp("hadamard")
    np.save(folder / "A.npy", (hadamard(16)[:8] / 8 ** 0.5).float().numpy())
    run_dir = folder / "run"
    return run_dir, train(run_dir, "model=lista", "data.m=8", "data.n=16", f"data.A_path={folder / 'A.npy'}",
                          "optim=sgd", "optim.lr=1e-30", "trainer.max_epochs=1")


@pytest.mark.parametrize("structure", ["butterfly", pytest.param("monarch", marks=pytest.mark.slow)])
def test_exactly_representable_matrices_compress_without_loss(hadamard_run, structure):
    run_dir, run = hadamard_run
    record, best, model = compressed(run_dir, structure)
    dense = record["models"]["dense"]["primary"]
    assert dense == pytest.approx(run["metrics"]["baseline/ista/test/nmse_db"], abs=1e-4)  # still ISTA
    assert record["models"][structure]["primary"] == pytest.approx(dense, abs=1e-4)
    for row in record["maps"]:
        assert row["relative_error"] < 1e-5
    torch.testing.assert_close(model.W.dense_matrix(), best["W"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def tilista_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tilista") / "run"
    train(run_dir, "model=tilista", "trainer.max_epochs=1")
    return run_dir


def bad_input(args: list[str], cwd: Path) -> str:
    """Run ``unroll-compress ARGS`` expecting exit code 2 and one line; return it."""
    result = compress_cli(args, cwd)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, lista_run, tilista_run):
    run_dir, _ = lista_run
    assert "no such run directory" in bad_input([str(tmp_path / "nowhere"), "--structure", "butterfly"], tmp_path)
    assert "invalid choice: 'kronecker'" in bad_input([str(run_dir), "--structure", "kronecker"], tmp_path)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, symlinks=True,
                    ignore=shutil.ignore_patterns("checkpoints", "checkpoints.d", "compressed_*"))
    assert "no checkpoints/last.pt" in bad_input([str(unfinished), "--structure", "butterfly"], tmp_path)
    line = bad_input([str(tilista_run), "--structure", "monarch"], tmp_path)
    assert "model=tilista (TiLISTA) cannot be compressed" in line
    assert not (tilista_run / "compressed_monarch" / "compress.json").exists()


@pytest.mark.slow
def test_ml_ista_classifier_is_compressed_with_accuracy_before_and_after(tmp_path):
    run_dir = tiny_ml_ista_run(tmp_path, unfoldings=1, epochs=1)
    run = read_metrics(run_dir)
    record, best, model = compressed(run_dir, "butterfly")
    assert record["primary_metric"] == "test/acc"
    assert record["models"]["dense"]["primary"] == pytest.approx(run["metrics"]["test/acc"], abs=1e-9)
    assert 0 <= record["models"]["butterfly"]["primary"] <= 100
    (row,) = record["maps"]
    weight, bias = best["classifier.weight"], best["classifier.bias"]
    assert row["map"] == "classifier" and row["shape"] == [10, 512]
    assert row["dense_params"] == weight.numel() + bias.numel()
    assert row["butterfly_params"] == model.classifier.twiddle.numel() + bias.numel()
    torch.testing.assert_close(model.classifier.dense_matrix().double(), butterfly_projection(weight),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(model.classifier.bias, bias, rtol=0, atol=0)  # the trained bias, kept
    torch.testing.assert_close(model.W[2], best["W.2"], rtol=0, atol=0)  # the pursuit as trained
    for label in ("dense", "butterfly"):
        assert "Test accuracy per number of unfoldings" in (run_dir / "compressed_butterfly" / label /
                                                            "results.md").read_text()


def test_a_layerwise_run_is_compressed_from_the_checkpoint_it_reported(tmp_path, one_thread):
    """The stage-wise trainer reports its last weights (it keeps no best epoch): compressed from
    last.pt, the dense model's numbers are the run's own."""
    run_dir = tmp_path / "run"
    train(run_dir, "model=lista_cp", "trainer=layerwise", "model.layers=2", "trainer.val_every_steps=2",
          "trainer.stage_patience_steps=2", "trainer.stage_max_steps=4")
    assert compress_main([str(run_dir), "--structure", "butterfly"]) == 0
    result = json.loads((run_dir / "compressed_butterfly/compress.json").read_text())
    assert result["checkpoint"] == "checkpoints/last.pt" and result["status"] == "completed"
    assert result["models"]["dense"]["metrics"]["test/nmse_db"] == read_metrics(run_dir)["metrics"]["test/nmse_db"]
