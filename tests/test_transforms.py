"""Transform learning (Dao et al., ICML 2019, Sec. 4.1): the targets against independent constructions,
the RMSE convention, gradient learning of the Hadamard transform, the exact factorization of Hadamard
and DFT, ``trainer.stop_at``, bad values refused, and a CLI multirun with its pivot table."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.polynomial import legendre

from conftest import compose_cfg, read_metrics, run_cli
from unroll_cli.errors import ConfigError
from unroll_cli.validation import validate
from unroll_cli.models.transform_models import BPModel
from unroll_cli.report.aggregate import main as report_main
from unroll_cli.run import build_model, build_task, run
from unroll_cli.tasks.transforms import TRANSFORMS, TransformLearning, target_matrix
from unroll_cli.train.polish import LBFGSPolish, freeze
from unroll_cli.train.trainer import NonFiniteLossError, Trainer

N = 16
k, n = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")  # row (output) and column (input) indices


def sylvester(size: int) -> np.ndarray:
    h = np.ones((1, 1))
    while len(h) < size:
        h = np.block([[h, h], [h, -h]])
    return h


def test_targets_match_independent_constructions():
    np.testing.assert_allclose(target_matrix("dft", N), np.fft.fft(np.eye(N), axis=0, norm="ortho"), atol=1e-14)
    np.testing.assert_allclose(target_matrix("hadamard", N), sylvester(N) / 4, atol=1e-15)
    # scipy's unnormalised DCT-II / DST-II (entries 2 cos, 2 sin) over sqrt(N): orthogonal rows, not unit ones
    dct = 2 * np.cos(math.pi * k * (2 * n + 1) / (2 * N)) / math.sqrt(N)
    dst = 2 * np.sin(math.pi * (k + 1) * (2 * n + 1) / (2 * N)) / math.sqrt(N)
    np.testing.assert_allclose(target_matrix("dct", N), dct, atol=1e-14)
    np.testing.assert_allclose(target_matrix("dst", N), dst, atol=1e-14)
    for name in ("dct", "dst"):
        gram = target_matrix(name, N) @ target_matrix(name, N).T
        np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-13)
    np.testing.assert_allclose(target_matrix("hartley", N) @ target_matrix("hartley", N).T, np.eye(N), atol=1e-13)
    conv = target_matrix("convolution", N)
    np.testing.assert_allclose(conv, conv[(k - n) % N, 0], atol=0)  # circulant: entry (i, j) is c[i - j]
    grid = np.linspace(-1, 1, N + 2)[1:-1]
    rows = np.stack([legendre.Legendre.basis(d)(grid) for d in range(N)])
    np.testing.assert_allclose(target_matrix("legendre", N), rows / math.sqrt(N), atol=1e-12)
    np.testing.assert_array_equal(target_matrix("randn", N), target_matrix("randn", N, seed=0))
    assert not np.array_equal(target_matrix("randn", N), target_matrix("randn", N, seed=1))


def test_the_rmse_counts_a_complex_entry_as_two_real_ones():
    """The DFT row of rmse.pkl: RMSE = ||E||_F / (N sqrt 2); a real target: ||E||_F / N."""
    rng = np.random.default_rng(0)
    for name, divisor in (("dft", N * math.sqrt(2)), ("hadamard", N)):
        task = TransformLearning(name, N)
        error = rng.standard_normal((N, N)) * 1e-3
        if name == "dft":
            error = error + 1j * rng.standard_normal((N, N)) * 1e-3
        perturbed = torch.from_numpy(target_matrix(name, N) + error)
        assert task.rmse(perturbed) == pytest.approx(np.linalg.norm(error) / divisor, rel=1e-9)


def test_a_batch_is_the_identity_and_the_target_or_random_basis_vectors_and_their_columns():
    full = TransformLearning("dct", N)
    eye, target = next(iter(full.train_batches()))
    assert torch.equal(eye, torch.eye(N)) and torch.equal(target, full.target)
    part = TransformLearning("dct", N, batch_size=5)
    eye, target = next(iter(part.train_batches()))
    idx = eye.argmax(dim=1)
    assert eye.shape == (5, N) and len(set(idx.tolist())) == 5 and torch.equal(target, part.target[:, idx])


def test_gradient_learning_of_the_hadamard_transform_at_16_reaches_rmse_below_1e_4(one_thread):
    """Adam (lr 1e-2) on the task's loss, then the polishing phase (frozen permutations, L-BFGS): as the
    authors, the best of a few trials (seeds); a trial often stalls at a poor relaxed permutation."""
    task = TransformLearning("hadamard", N)
    best = math.inf
    for seed in range(8):
        torch.manual_seed(seed)
        model = BPModel(**task.model_kwargs())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(600):
            eye, target = next(iter(task.train_batches()))
            loss = task.loss(model(eye), (eye, target), model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        polish = LBFGSPolish(steps=20)
        polish.on_fit_end(SimpleNamespace(model=model, task=task, check_finite=Trainer.check_finite,
                                          better=lambda value, best: value < best, save_phase=lambda: None))
        polished = polish.metrics()["polish/after"]
        assert task.rmse(task.model_matrix(model)) == polished  # the model is left in its best state
        assert all(m.frozen for m in model.modules() if hasattr(m, "frozen"))
        best = min(best, polished)
        if best < 1e-4:
            break
    assert best < 1e-4


@pytest.mark.parametrize("size", [16, 256])
def test_the_factorization_of_hadamard_and_dft_is_exact(size):
    """Le et al. 2022: exact on products of butterfly factors (the DFT after the bit reversal)."""
    for name, permutation in (("hadamard", "none"), ("dft", "bitrev")):
        result = TransformLearning(name, size).factorize()
        assert result["rmse"] < 1e-14 and result["permutation"] == permutation
    assert TransformLearning("randn", size).factorize()["rmse"] > 1e-2  # not a butterfly


def test_every_transform_builds_its_model_and_the_paper_model_per_target():
    for name in TRANSFORMS:
        cfg = compose_cfg(["+experiment=dao2019_transforms", f"data.transform={name}", "data.N=8"])
        task = build_task(cfg, torch.device("cpu"))
        model = build_model(cfg.model, task, cfg)
        assert model.kind == {"dct": "BPP", "dst": "BPP", "convolution": "BPBP"}.get(name, "BP")
        assert model(task.eye).dtype.is_complex == (name == "dft")
        assert task.loss(model(task.eye), (task.eye, task.target), model).item() > 0


@pytest.mark.parametrize("override, key", [("data.N=12", "data.N"), ("data.N=1", "data.N"),
                                            ("data.transform=dft2", "data.transform"),
                                            ("model.kind=BBT", "model.kind")])
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(compose_cfg(["+experiment=dao2019_transforms", override]))


def test_a_size_beyond_the_memory_is_refused_before_any_work():
    cfg = compose_cfg(["+experiment=dao2019_transforms", f"data.N={2 ** 24}"])
    with pytest.raises(ConfigError, match="^data.N=16777216: this run would need about"):
        build_task(cfg, torch.device("cpu"))


def test_stop_at_ends_training_once_the_monitor_reaches_it(tmp_path, one_thread):
    """A generic trainer option: a value any first epoch reaches stops after that epoch."""
    common = ["+experiment=dao2019_transforms", "data.N=8", "trainer.max_epochs=3", "trainer.steps_per_epoch=2",
              "~callbacks.polish", "tensorboard=false", "trainer.progress=false", "device=cpu"]
    for stop_at, epochs in (("1e6", 1), ("null", 3)):
        run(compose_cfg([*common, f"trainer.stop_at={stop_at}"]), tmp_path / stop_at)
        assert len(pd.read_csv(tmp_path / stop_at / "history.csv")) == epochs


def test_a_multirun_writes_the_metrics_and_the_pivot_shows_the_published_rmse(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "+experiment=dao2019_transforms", "data.transform=hadamard,dft", "data.N=8",
                      "trainer.max_epochs=2", "trainer.steps_per_epoch=10", "callbacks.polish.steps=3",
                      "trainer.progress=false", "tensorboard=false", "device=cpu", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    for job, published in ((0, 8.8e-07), (1, 3.1e-06)):
        metrics = read_metrics(sweep / str(job))["metrics"]
        assert set(metrics) == {"test/rmse", "test/rmse_adam", "factorize/rmse", "train/seconds", "factorize/seconds",
                                "polish/before", "polish/after", "polish/seconds", "published/test/rmse"}
        assert metrics["published/test/rmse"] == published and metrics["factorize/rmse"] < 1e-14
        assert metrics["test/rmse"] == metrics["polish/after"] <= metrics["polish/before"]  # the polished model
        assert "RMSE per method" in (sweep / str(job) / "results.md").read_text()
    capsys.readouterr()
    assert report_main([str(sweep), "--pivot", "data.transform", "data.N"]) == 0
    printed = capsys.readouterr().out
    assert "test/rmse, mean" in printed and "published/test/rmse:" in printed
    pivot = pd.read_csv(sweep / "report_pivot.csv").set_index("data.transform")
    assert pivot["published"].to_dict() == {"hadamard": 8.8e-07, "dft": 3.1e-06}
    assert (pivot["data.N"] == 8).all() and (pivot["count"] == 1).all()


POLISHED = ["+experiment=dao2019_transforms", "data.transform=hadamard", "data.N=8", "trainer.max_epochs=2",
            "trainer.steps_per_epoch=10", "callbacks.polish.steps=5", "tensorboard=false", "trainer.progress=false",
            "device=cpu"]


def test_polishing_is_a_checkpointed_phase_that_a_resume_does_not_repeat(tmp_path, one_thread):
    run(compose_cfg(POLISHED), tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")["metrics"]
    best = torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)
    assert best["callbacks"]["polish"]["done"] is True
    task = TransformLearning("hadamard", 8)
    model = BPModel(**task.model_kwargs())
    model.load_state_dict(best["model"])
    freeze(model)
    assert task.rmse(task.model_matrix(model)) == metrics["polish/after"] == metrics["test/rmse"]
    # the same config resumed from the finished run: nothing to train, nothing to polish, the same model
    run(compose_cfg([*POLISHED, f"resume={tmp_path / 'run'}"]), tmp_path / "again")
    again = read_metrics(tmp_path / "again")["metrics"]
    timed = {"factorize/seconds"}  # measured again by the report
    assert {k: v for k, v in again.items() if k not in timed} == {k: v for k, v in metrics.items() if k not in timed}


def test_a_non_finite_polishing_loss_fails_the_run_keeping_the_trained_checkpoint(tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(TransformLearning, "loss", lambda self, outputs, batch, model: outputs.real.sum() * float("nan"))
    cfg = compose_cfg([*POLISHED, "trainer.max_epochs=0"])
    with pytest.raises(NonFiniteLossError):
        run(cfg, tmp_path)
    assert read_metrics(tmp_path)["status"] == "failed"


def test_polishing_needs_the_whole_training_data_and_a_valid_step_count(tiny_cfg, tmp_path):
    cfg = tiny_cfg("+callbacks=polish")
    with pytest.raises(ConfigError, match=r"^callbacks\.polish: polishing fits the whole training data"):
        run(cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"^callbacks\.polish: ValueError: steps must be an integer >= 0"):
        run(compose_cfg([*POLISHED, "callbacks.polish.steps=-1"]), tmp_path)
