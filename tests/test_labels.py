"""What a person reads: metric keys as labels in figures and results.md, figure titles that tell the
runs of a sweep apart, whole-number layer ticks, small numbers in scientific notation, and a
reconstruction (sigma 0) that prints no infinite PSNR and agrees between metrics.json and results.md.

Figures are inspected as matplotlib objects (Agg): each one the recorder writes is kept by a wrapper
around RunRecorder.write_figure."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import TINY, read_metrics, run_cli
from test_report import write_run
from unroll_cli.record.labels import metric_label, overrides_line, title_overrides
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.record.report import Report, Table, write_report
from unroll_cli.report.formatting import readable
from unroll_cli.report.plots import plot_metric
from unroll_cli.report.runs import load_runs


@pytest.fixture
def written_figures(monkeypatch):
    """{(run directory name, file name): figure} of every figure a RunRecorder writes."""
    kept, original = {}, RunRecorder.write_figure

    def keep(self, name, figure):
        original(self, name, figure)
        kept[self.dir.name, name] = figure

    monkeypatch.setattr(RunRecorder, "write_figure", keep)
    return kept


def headline(results: str) -> dict[str, str]:
    """{key: value as printed} of results.md's first table (metric | key | value)."""
    table = next(block for block in results.split("\n\n") if block.startswith("|"))
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    return {key.strip(): value.strip() for _, key, value in rows}


def whole_ticks(ax) -> list[float]:
    """The x ticks inside the axis' view (the locator also returns some beyond it)."""
    lo, hi = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if lo <= t <= hi]


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("key, label", [
    ("test/nmse_db", "test NMSE (dB)"),
    ("val/nmse_db", "validation NMSE (dB)"),
    ("baseline/ista/test/nmse_db", "ISTA baseline: test NMSE (dB)"),
    ("baseline/fista/test/support_f1", "FISTA baseline: test support F1"),
    ("published/test/nmse_db", "published test NMSE (dB)"),
    ("published/baseline/amp/test/nmse_db", "published AMP baseline: test NMSE (dB)"),
    ("test/psnr_s25", "test PSNR (dB), sigma 25"),
    ("test/psnr_s12.5_std", "test PSNR std (dB), sigma 12.5"),
    ("test/psnr_input", "test PSNR of the input (dB)"),
    ("val/acc", "validation accuracy (%)"),
    ("test/acc_best", "test accuracy (%), best epoch"),
    ("train/loss", "training loss"),
    ("factorize/rmse", "factorization RMSE"),
    ("psnr_input", "PSNR of the input (dB)"),  # a table's column: no split
    ("val/psnr (test images)", "validation PSNR (dB) (test images)"),  # a renamed history column keeps its note
    # unknown parts: the key itself
    ("coherence/dictionary", "coherence/dictionary"), ("test/nmse_db_foo", "test/nmse_db_foo"),
    ("holdout/acc", "holdout/acc"), ("baseline/ista", "baseline/ista"), ("published/x", "published/x"),
    ("layer", "layer"), ("a/b/c", "a/b/c"),
])
def test_a_metric_key_is_labelled_from_its_parts(key, label):
    assert metric_label(key) == label


def test_title_overrides_leave_out_hydra_and_paths_and_put_what_the_sweep_varies_first(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "3").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"seed": "0,1"}},
        "overrides": {"task": ["data.m=20", "model.lam=0.1,0.2", "model.grad=g_dec"]}}}))
    job = ["data.m=20", "data.root=/data", "model.grad=g_dec", "+experiment=e", "hydra.job.chdir=true",
           "hydra/launcher=joblib", "resume=outputs/x", "model.dictionary_path=d.npy", "data.test_dir=t",
           "data.A_path=A.npy", "model.lam=0.2", "seed=1"]
    expected_rest = ["data.m=20", "model.grad=g_dec", "+experiment=e"]
    assert title_overrides(job, sweep / "3") == ["model.lam=0.2", "seed=1", *expected_rest]
    assert title_overrides(job, tmp_path / "single") == ["data.m=20", "model.grad=g_dec", "+experiment=e",
                                                          "model.lam=0.2", "seed=1"]  # no sweep: as typed
    (sweep / "multirun.yaml").write_text("[not a hydra config")  # unreadable: the order as typed
    assert title_overrides(job, sweep / "3")[0] == "data.m=20"


def test_an_overlong_line_of_overrides_is_wrapped_and_cut():
    overrides = [f"model.key{i}=value{i}" for i in range(20)]
    lines = overrides_line(overrides, width=40).split("\n")
    assert len(lines) == 2 and all(len(line) <= 40 for line in lines) and lines[-1].endswith("...")
    assert overrides_line(overrides[:2], width=40) == "model.key0=value0 model.key1=value1"
    assert overrides_line([], width=40) == ""


# ----------------------------------------------------------------------------- a sweep's figures
def test_a_sweeps_figures_show_labels_whole_layer_ticks_and_what_tells_the_runs_apart(tmp_path, written_figures):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *TINY, "model=lista", "model.operator=dense,butterfly", "tensorboard=false",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for job, operator in enumerate(["dense", "butterfly"]):
        curve = written_figures[str(job), "nmse_per_layer.png"]
        title = curve.get_suptitle()
        # the model with its operator, then the job's overrides: the swept one first, however many others
        assert title.split("\n")[0] == f"lista, {operator} operator, 20x40, noiseless"
        assert title.split("\n")[1].startswith(f"model.operator={operator} ")
        ax = curve.axes[0]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "test NMSE (dB)", "ISTA baseline: test NMSE (dB)", "FISTA baseline: test NMSE (dB)"]
        assert ax.get_xlabel() == "layer"
        thresholds = written_figures[str(job), "thresholds.png"].axes[0]
        for axis in (ax, thresholds):
            ticks = whole_ticks(axis)
            assert len(ticks) >= 3 and all(t == round(t) for t in ticks), ticks
        training = written_figures[str(job), "training_curve.png"]
        assert [a.get_ylabel() for a in training.axes] == ["training loss", "validation NMSE (dB)"]
        assert f"model.operator={operator}" in training.get_suptitle()
        results = (sweep / str(job) / "results.md").read_text()
        assert set(headline(results)) == set(read_metrics(sweep / str(job))["metrics"])
        assert re.search(r"^\| test NMSE \(dB\) +\| test/nmse_db +\|", results, re.M)
        assert re.search(r"^\| +layer \| +test NMSE \(dB\) \| +ISTA baseline: test NMSE \(dB\) \|", results, re.M)
    assert pd.read_csv(sweep / "0" / "layers.csv").columns[1] == "test/nmse_db"  # the CSV keeps the keys


def test_the_report_plot_names_its_axis_and_lines_for_people(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    for i, (model, lr) in enumerate((m, lr) for m in ("lista", "alista") for lr in ("1e-4", "1e-3")):
        write_run(tmp_path, str(i), [f"model={model}", f"optim.lr={lr}"], {"test/nmse_db": -10.0 - i})
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_metric(load_runs([str(tmp_path)]), "test/nmse_db", "optim.lr", tmp_path / "report.png")
    ax = closed[0].axes[0]
    assert ax.get_ylabel() == "test NMSE (dB)" and ax.get_xlabel() == "optim.lr"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["model=alista", "model=lista"]


# ----------------------------------------------------------------------------- numbers
def test_small_numbers_are_scientific_on_the_console_and_in_results(tmp_path):
    """The factorization of the DFT is exact: its RMSE is rounding error, about 1e-16."""
    result = run_cli(["+experiment=dao2019_transforms", "data.transform=dft", "data.N=8", "trainer.max_epochs=1",
                      "trainer.steps_per_epoch=2", "~callbacks.polish", "optimized_metric=factorize/rmse",
                      "trainer.progress=false", "tensorboard=false", "device=cpu", "hydra.run.dir=run"],
                     cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    value = read_metrics(tmp_path / "run")["metrics"]["factorize/rmse"]
    assert 0 < value < 1e-3
    printed = re.search(r"factorize/rmse = (\S+)", result.stdout + result.stderr).group(1)
    shown = headline((tmp_path / "run/results.md").read_text())["factorize/rmse"]
    for text in (printed, shown):
        assert re.fullmatch(r"\d\.\d\de-\d\d", text) and float(text) == pytest.approx(value, rel=1e-2), text


def test_results_tables_print_whole_numbers_as_integers_and_small_or_large_ones_scientific():
    table = pd.DataFrame({"layer": [0, 1], "sigma": [25.0, 50.0], "test/rmse": [0.5, 2.5e-5],
                          "test/nmse_db": [-30.4123, float("nan")], "pathnorm/l1": [2.548e21, 999999.5],
                          "name": ["a", "b"]})
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in readable(table).splitlines()[2:]]
    assert rows == [["0", "25", "0.5000", "-30.41", "2.55e+21", "a"], ["1", "50", "2.50e-05", "", "999999.50", "b"]]


def test_results_md_and_metrics_json_agree_on_every_metric_finite_or_not(tmp_path):
    recorder = RunRecorder(tmp_path, tensorboard=False)
    recorder.start()
    metrics = {"test/rmse": 1.8e-05, "test/nmse_db": -30.4123, "test/acc": 97.5, "test/loss": float("nan"),
               "test/psnr": float("inf")}
    layers = pd.DataFrame({"layer": [0, 1], "test/rmse": [1.0, 1.8e-05]})
    recorder.finish(write_report(Report("t", metrics, {"layers.csv": Table(layers, ["layer"], "per layer")}),
                                 recorder))
    stored = read_metrics(tmp_path)["metrics"]
    shown = headline((tmp_path / "results.md").read_text())
    assert set(shown) == set(stored) == set(metrics)
    for key, text in shown.items():
        if stored[key] is None:
            assert text == "null" and not math.isfinite(metrics[key])
        else:
            assert float(text) == pytest.approx(stored[key], rel=1e-3)
    assert shown["test/rmse"] == "1.80e-05"
    assert re.search(r"^\| +1 \| +1\.80e-05 \|$", (tmp_path / "results.md").read_text(), re.M)


# ----------------------------------------------------------------------------- sigma 0
def test_a_reconstruction_at_sigma_0_prints_no_infinite_psnr(tmp_path, written_figures):
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (24, 28), dtype=np.uint8)).save(tmp_path / split / f"{i}.png")
    result = run_cli(["+experiment=tolooshams2022_denoise", f"data.train_dir={tmp_path / 'train'}",
                      f"data.test_dir={tmp_path / 'test'}", "data.crop=16", "data.test_crop=null",
                      "model.filters=4", "model.kernel_size=5", "model.stride=2", "model.layers=3",
                      "trainer.max_epochs=1", "trainer.progress=false", "tensorboard=false", "data.sigma=0",
                      "data.test_sigmas=[0]", "hydra.run.dir=run"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    panels = [ax.get_title() for ax in written_figures["run", "denoised.png"].axes if ax.get_title()]
    assert [p.split(",")[0].split(":")[0] for p in panels] == ["input", "reconstruction"] * 2
    assert not any("inf" in p or "noisy" in p or "denoised" in p for p in panels)
    items = pd.read_csv(run / "items.csv")
    finals = [float(p.split(", ")[1].removesuffix(" dB")) for p in panels[1::2]]
    assert finals == pytest.approx(items["psnr"].tolist(), abs=0.005)
    assert np.isinf(items["psnr_input"]).all()  # the input is the clean image: the value itself, in the CSV
    stored = read_metrics(run)["metrics"]
    shown = headline((run / "results.md").read_text())
    assert "test/psnr_input" not in stored and set(shown) == set(stored)
    for key, text in shown.items():
        assert float(text) == pytest.approx(stored[key], rel=1e-3)


def test_fractional_keys_of_a_report_table_are_printed_by_the_number_rule():
    """A pruning round's density 0.5120018... is a key of rounds.csv: printed 0.5120, whole keys as they are."""
    from unroll_cli.report.formatting import paper_cells

    table = pd.DataFrame({"round": [0, 3], "density": [1.0, 0.5120018450184501], "model": ["mlp", "mlp"],
                          "test/acc mean": [84.3, 85.1], "test/acc std": [0.9, 0.5], "test/acc count": [3, 3]})
    cells = paper_cells(table)
    assert cells["density"].tolist() == ["1.00", "0.5120"] and cells["round"].tolist() == [0, 3]
    assert cells["model"].tolist() == ["mlp", "mlp"]
