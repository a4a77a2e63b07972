"""unroll-report over a real multirun: rows, means and counts against the per-run files."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TINY, run_cli
from unroll_cli.report.formatting import paper_cells
from unroll_cli.report.plots import plot_metric
from unroll_cli.report.runs import find_runs, load_runs, read_runs
from unroll_cli.report.sweeps import expand_sweep, missing_jobs, planned_jobs
from unroll_cli.report.tables import summarize
from unroll_cli.report.aggregate import main as report_main


@pytest.mark.slow
def test_report_of_a_2x2_sweep_with_one_failing_job(tmp_path):
    sweep = tmp_path / "sweep"
    # lista at lr 1e30 diverges: its two jobs fail, the ista jobs complete, the sweep goes on.
    result = run_cli(["-m", *TINY, "model=ista,lista", "seed=0,1", "optim.lr=1e30", "tensorboard=false",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode != 0  # the sweep's exit code says some jobs failed
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert len(records) == 4, result.stderr
    assert sorted(r["status"] for r in records.values()) == ["completed", "completed", "failed", "failed"]

    report = subprocess.run([sys.executable, "-m", "unroll_cli.report", str(sweep), "--layers",
                             "--metrics", "test/nmse_db"], capture_output=True, text=True, cwd=tmp_path)
    assert report.returncode == 1  # some runs did not complete
    assert "2 run(s) not completed" in report.stdout and "NonFiniteLossError" in report.stdout
    runs = load_runs([str(sweep)])  # the Python API: one row per run, overrides as columns
    assert len(runs) == 4 and sorted(runs["model"]) == ["ista", "ista", "lista", "lista"]
    table = pd.read_csv(sweep / "report.csv")
    assert list(table["model"]) == ["ista"]  # failed runs are never averaged in
    # the columns: what varies (seed is averaged over), the parameter count, then the chosen metric;
    # shared overrides apart
    assert list(table) == ["model", "params", "test/nmse_db mean", "test/nmse_db std", "test/nmse_db count"]
    assert table["params"].iloc[0] == max(r["params"] for r in records.values() if r["model"] == "ista")
    assert "Every run: " in report.stdout and "optim.lr=1e+30" in report.stdout
    ista = [r["metrics"]["test/nmse_db"] for r in records.values() if r["model"] == "ista"]
    row = table.iloc[0]
    assert row["test/nmse_db count"] == 2
    assert abs(row["test/nmse_db mean"] - np.mean(ista)) < 1e-9
    assert abs(row["test/nmse_db std"] - np.std(ista, ddof=1)) < 1e-9
    assert (sweep / "report.tex").read_text().startswith("\\begin{tabular}")

    # The per-layer table: each layer's mean over the two ista runs' own layers.csv.
    per_layer = pd.read_csv(sweep / "report_layers.csv")
    ista_layers = [pd.read_csv(sweep / name / "layers.csv") for name, r in records.items() if r["model"] == "ista"]
    expected = (ista_layers[0]["test/nmse_db"] + ista_layers[1]["test/nmse_db"]) / 2
    assert list(per_layer["layer"]) == list(range(len(expected)))
    assert np.allclose(per_layer["test/nmse_db mean"], expected) and set(per_layer["test/nmse_db count"]) == {2}

    # Re-running the same command skips the completed jobs and runs the failed ones again.
    stamps = {name: (sweep / name / "metrics.json").stat().st_mtime_ns for name in records}
    again = run_cli(["-m", *TINY, "model=ista,lista", "seed=0,1", "optim.lr=1e30", "tensorboard=false",
                     f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert again.stdout.count("(already completed)") == 2
    for name, record in records.items():
        rerun = (sweep / name / "metrics.json").stat().st_mtime_ns != stamps[name]
        assert rerun == (record["status"] == "failed"), name
    assert again.returncode != 0


def test_grouping_is_over_everything_but_the_seed(tmp_path):
    runs = pd.DataFrame({"run": list("abcd"), "status": ["completed"] * 4, "error": None,
                         "model": ["x", "x", "y", "y"], "seed": ["0", "1", "0", "1"],
                         "test/acc": [1.0, 3.0, 5.0, 9.0], "published/test/acc": [2.5, 2.5, 7.0, 7.0]})
    table = summarize(runs).set_index("model")
    assert table.loc["x", "test/acc mean"] == 2.0 and table.loc["y", "test/acc mean"] == 7.0
    assert table.loc["y", "test/acc count"] == 2
    assert table.loc["x", "test/acc diff"] == -0.5 and table.loc["y", "test/acc diff"] == 0.0
    by_seed = summarize(runs, group_by=["seed"]).set_index("seed")
    assert by_seed.loc["0", "test/acc mean"] == 3.0


def write_run(root, name, overrides, metrics, status="completed", optimized=None):
    """A run directory in the contract, written by hand (no training); ``optimized``: the name of the metric
    it records as optimized."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    record = {"status": status, "metrics": metrics, "overrides": overrides}
    if optimized:
        record["optimized"] = {"name": optimized, "value": metrics.get(optimized)}
    (run / "metrics.json").write_text(json.dumps(record))


def test_a_deleted_key_and_a_key_left_at_its_default_are_named_groups(tmp_path, capsys):
    # an experiment with and without its callback (``~callbacks.enorm``), two seeds each
    for name, overrides, acc in (("a", ["seed=0"], 90.0), ("b", ["seed=1"], 92.0),
                                 ("c", ["~callbacks.enorm", "seed=0"], 88.0),
                                 ("d", ["~callbacks.enorm", "seed=1"], 89.0)):
        write_run(tmp_path, name, overrides, {"test/acc": acc})
    assert report_main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "report.csv").set_index("callbacks.enorm")
    assert table.loc["(default)", "test/acc mean"] == 91.0 and table.loc["(deleted)", "test/acc mean"] == 88.5
    assert "| (deleted)" in capsys.readouterr().out


def test_plot_of_a_metric_against_a_swept_parameter_and_wrong_names(tmp_path, capsys):
    # model x lr x seed; lr as Hydra writes it, so string order (1e-3 < 1e-4) would be wrong
    values = {}
    for i, (model, lr, seed) in enumerate((m, lr, s) for m in ("lista", "alista")
                                           for lr in ("1e-4", "3e-4", "1e-3") for s in (0, 1)):
        values[model, lr, seed] = -10.0 * (i + 1) - seed
        write_run(tmp_path, str(i), [f"model={model}", f"optim.lr={lr}", f"seed={seed}"],
                  {"test/nmse_db": values[model, lr, seed]})
    write_run(tmp_path, "failed", ["model=lista", "optim.lr=1e-4", "seed=2"], {}, status="failed")
    points = plot_metric(load_runs([str(tmp_path)]), "test/nmse_db", "optim.lr", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert list(points["line"].unique()) == ["alista", "lista"]
    for _, point in points.iterrows():
        lr = next(k for k in ("1e-4", "3e-4", "1e-3") if float(k) == point["optim.lr"])
        seeds = [values[point["line"], lr, s] for s in (0, 1)]
        assert point["mean"] == np.mean(seeds) and point["count"] == 2  # the failed run is left out
    assert list(points[points["line"] == "lista"]["optim.lr"]) == [1e-4, 3e-4, 1e-3]

    with pytest.raises(SystemExit):
        report_main([str(tmp_path), "--plot", "test/nmse_dB", "optim.lr"])
    assert "no metric 'test/nmse_dB'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_main([str(tmp_path), "--group-by", "optim.lrr"])
    assert "--group-by optim.lrr: not an override" in capsys.readouterr().err


def printed_table(stdout: str, heading: str | None = None) -> list[dict[str, str]]:
    """The rows of the Markdown table the report printed under the line ending in ``heading`` (by default
    first), as {column: cell}."""
    text = stdout.split(f"{heading}\n\n")[1] if heading else stdout
    lines = text.split("\n\n")[0].splitlines()
    cells = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    return [dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]]


def listed(stdout: str) -> list[dict[str, str]]:
    """The rows of the report's printed 'run(s) not completed' table, as {column: cell}."""
    return printed_table(stdout, "not completed:")


def report(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``unroll-report ARGS`` as a user runs it (exit code, stdout, stderr)."""
    return subprocess.run([sys.executable, "-m", "unroll_cli.report", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.slow
def test_a_real_sweep_with_a_job_directory_deleted_lists_that_job_as_missing(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *TINY, "model=ista,fista", "seed=0,1", "tensorboard=false",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)  # ista, fista: nothing to train, fast
    assert result.returncode == 0, result.stderr
    assert report(str(sweep)).returncode == 0  # all four jobs ran: nothing missing
    gone = json.loads((sweep / "2" / "metrics.json").read_text())["overrides"]
    shutil.rmtree(sweep / "2")

    runs, jobs = read_runs([str(sweep)])
    missing = missing_jobs([sweep], jobs)  # the Python API: the job's every override
    overrides = dict(o.split("=", 1) for o in gone)
    assert len(runs) == 3 and list(missing["status"]) == ["missing"]
    assert missing.drop(columns=["run", "status", "error"]).iloc[0].to_dict() == overrides
    out = report(str(sweep))
    assert out.returncode == 1, out.stderr
    assert listed(out.stdout) == [{"run": str(sweep), "status": "missing",
                                   "error": "no run with these overrides",
                                   "model": overrides["model"], "seed": overrides["seed"]}]


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # as multirun.yaml names it


def write_multirun(sweep, task, params=None, target=BASIC_SWEEPER):
    """A sweep's multirun.yaml with the nodes Hydra's sweeper writes there that the report reads."""
    sweep.mkdir(parents=True, exist_ok=True)
    hydra = {"sweeper": {"_target_": target, "max_batch_size": None, "params": params},
             "overrides": {"hydra": [f"hydra.sweep.dir={sweep}", "hydra.mode=MULTIRUN"], "task": task}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra, "seed": 0}))


def test_planned_jobs_are_the_cartesian_product_of_the_sweep(tmp_path):
    assert expand_sweep(["a=1,2", "b=x,y", "c=3"]) == [
        ["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"], ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]
    # hydra.sweeper.params joins the command line, which wins for the same key (a=5, not 1,2)
    write_multirun(tmp_path, ["a=5", "b=x,y"], params={"a": "1,2", "+d": "u,v"})
    assert sorted(map(sorted, planned_jobs(tmp_path))) == sorted(map(sorted, [
        ["a=5", "+d=u", "b=x"], ["a=5", "+d=u", "b=y"], ["a=5", "+d=v", "b=x"], ["a=5", "+d=v", "b=y"]]))
    write_multirun(tmp_path, ["lr=range(1,3)", "m=ista"])
    assert planned_jobs(tmp_path) == [["lr=1", "m=ista"], ["lr=2", "m=ista"]]
    # an Optuna study samples its trials: no plan, no missing-job check
    write_multirun(tmp_path, ["a=1,2"], target="unroll_cli.sweep.optuna_study.OptunaSweeper")
    assert planned_jobs(tmp_path) == []


def test_a_multirun_yaml_that_cannot_give_the_planned_jobs_is_listed_unreadable(tmp_path, capsys):
    write_run(tmp_path, "0", ["a=1"], {"test/acc": 1.0})
    multirun = tmp_path / "multirun.yaml"

    def unreadable_sweep() -> str:
        assert report_main([str(tmp_path)]) == 1
        [row] = listed(capsys.readouterr().out)
        assert row["run"] == str(tmp_path) and row["status"] == "unreadable"
        return row["error"]

    multirun.write_text("hydra: [")
    assert unreadable_sweep().startswith(f"{multirun}: not valid YAML")
    multirun.write_text("seed: 0\n")
    assert unreadable_sweep().startswith(f"{multirun}: not a Hydra multirun config")
    write_multirun(tmp_path, ["a=glob(*)"])  # glob() needs the application's configs to expand
    assert unreadable_sweep().startswith(f"{multirun}: cannot expand the sweep")


def test_failed_running_and_missing_jobs_of_a_sweep_are_listed_and_fail(tmp_path, capsys):
    write_multirun(tmp_path, ["a=1,2", "b=x,y", "c=3"])
    write_run(tmp_path, "0", ["a=1", "b=x", "c=3"], {"test/acc": 1.0})
    write_run(tmp_path, "1", ["a=1", "b=y", "c=3"], {"test/acc": 2.0}, status="running")
    write_run(tmp_path, "2", ["a=2", "b=x", "c=3"], {}, status="failed")  # job 3 (a=2 b=y) never ran
    assert report_main([str(tmp_path)]) == 1
    bad = pd.read_csv(tmp_path / "runs.csv")
    assert list(bad["status"]) == ["completed", "running", "failed"]
    out = capsys.readouterr().out
    assert "3 run(s) not completed" in out
    assert [(row["run"], row["status"], row["a"], row["b"]) for row in listed(out)] == [
        (str(tmp_path / "1"), "running", "1", "y"), (str(tmp_path / "2"), "failed", "2", "x"),
        (str(tmp_path), "missing", "2", "y")]
    assert pd.read_csv(tmp_path / "report.csv")["test/acc count"].tolist() == [1]  # only the completed run

    write_run(tmp_path, "3", ["a=2", "b=y", "c=3"], {}, status="pruned")
    for run, status in (("1", "completed"), ("2", "completed")):
        record = json.loads((tmp_path / run / "metrics.json").read_text())
        (tmp_path / run / "metrics.json").write_text(json.dumps({**record, "status": status}))
    assert report_main([str(tmp_path)]) == 0  # every job completed or was pruned


def test_a_run_still_running_is_not_a_success_a_pruned_one_is(tmp_path):
    write_run(tmp_path, "done", ["a=1"], {"test/acc": 1.0})
    write_run(tmp_path, "pruned", ["a=2"], {}, status="pruned")
    assert report_main([str(tmp_path)]) == 0
    write_run(tmp_path, "running", ["a=3"], {}, status="running")
    assert report_main([str(tmp_path)]) == 1


@pytest.mark.parametrize("content", [b"{not json", b'{"status": "completed", "metrics": {"test/acc": 1', b"",
                                     b"[1, 2]", b'"completed"', b"\xff\xfe\x00garbage"],
                         ids=["garbage", "truncated", "empty", "list", "string", "binary"])
def test_an_unreadable_metrics_json_is_listed_not_a_crash(tmp_path, capsys, content):
    write_run(tmp_path, "good", ["a=1", "c=3"], {"test/acc": 1.0})
    write_run(tmp_path, "good2", ["a=2", "c=3"], {"test/acc": 2.0})
    write_run(tmp_path, "bad", ["a=9", "c=3"], {"test/acc": 9.0})
    (tmp_path / "bad" / "metrics.json").write_bytes(content)
    assert report_main([str(tmp_path)]) == 1
    runs = pd.read_csv(tmp_path / "runs.csv").set_index("run")
    assert runs.loc[str(tmp_path / "bad"), "status"] == "unreadable"
    assert runs.loc[str(tmp_path / "bad"), "error"].startswith(str(tmp_path / "bad" / "metrics.json") + ": ")
    assert runs.loc[str(tmp_path / "good"), "status"] == "completed"
    table = pd.read_csv(tmp_path / "report.csv")  # the readable runs' table: by a, c=3 shared
    assert list(table.columns[:2]) == ["a", "test/acc mean"] and table["test/acc mean"].tolist() == [1.0, 2.0]
    out = capsys.readouterr().out
    assert "Every run: c=3" in out and "1 run(s) not completed" in out


def test_a_garbage_overrides_yaml_is_unreadable_unless_metrics_json_has_the_overrides(tmp_path, capsys):
    for name, text in (("garbage", "- a=1\n  : [unclosed"), ("mapping", "a: 1\n")):
        write_run(tmp_path, name, [], {"test/acc": 1.0})
        (tmp_path / name / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": {}}))
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(text)
    write_run(tmp_path, "preferred", ["a=3"], {"test/acc": 3.0})
    (tmp_path / "preferred" / ".hydra" / "overrides.yaml").write_text("- a=1\n  : [unclosed")
    assert report_main([str(tmp_path)]) == 1
    runs = pd.read_csv(tmp_path / "runs.csv").set_index("run")
    for name in ("garbage", "mapping"):
        assert runs.loc[str(tmp_path / name), "status"] == "unreadable"
        assert str(tmp_path / name / ".hydra" / "overrides.yaml") in runs.loc[str(tmp_path / name), "error"]
    assert runs.loc[str(tmp_path / "preferred"), "status"] == "completed"
    assert runs.loc[str(tmp_path / "preferred"), "a"] == 3
    assert "2 run(s) not completed" in capsys.readouterr().out


def test_a_path_that_does_not_exist_or_holds_no_run_exits_2(tmp_path):
    missing = tmp_path / "no" / "such-sweep"
    result = report(str(missing))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"unroll-report: error: {missing}: no such run or sweep directory"]
    empty = report(str(tmp_path))
    assert empty.returncode == 2 and "no run directories" in empty.stderr and "Traceback" not in empty.stderr


def test_only_unfinished_runs_list_them_write_the_files_and_exit_1(tmp_path, capsys):
    write_run(tmp_path, "0", ["model=x", "seed=0"], {}, status="failed")
    write_run(tmp_path, "1", ["model=y", "seed=0"], {"val/acc": 0.5}, status="interrupted")
    write_run(tmp_path, "2", ["model=y", "seed=1"], {}, status="running")
    (tmp_path / "1" / "layers.csv").write_text("layer,val/acc\n0,0.1\n1,0.5\n")
    code = report_main([str(tmp_path), "--layers", "--metrics", "val/*", "--group-by", "model",
                        "--plot", "val/acc", "seed"])
    assert code == 1
    out = capsys.readouterr().out
    assert "3 run(s) not completed" in out and "(no completed run)" in out and "no plot" in out
    for file in ("report.csv", "report.tex", "runs.csv", "report_layers.csv"):
        assert (tmp_path / file).is_file(), file
    assert not (tmp_path / "report.png").exists()
    assert list(pd.read_csv(tmp_path / "report.csv").columns)[0] == "model"
    assert summarize(load_runs([str(tmp_path)])).empty


def test_a_printed_cell_is_mean_std_and_count_at_the_means_decimals():
    runs = pd.DataFrame({"run": list("abcd"), "status": ["completed"] * 4, "error": None,
                         "model": ["x", "x", "x", "y"], "seed": ["0", "1", "2", "0"],
                         "test/nmse_db": [-30.3, -30.5, -30.45, -29.0], "published/test/nmse_db": [-30.5] * 4,
                         "test/acc": [0.91, 0.92, 0.93, 0.5]})
    cells = paper_cells(summarize(runs)).set_index("model")
    assert list(cells.columns) == ["test/nmse_db", "published/test/nmse_db", "test/nmse_db diff", "test/acc"]
    # x: mean -91.25 / 3 = -30.4167; deviations 0.1167, -0.0833, -0.0333: std sqrt(0.021667 / 2) = 0.1041
    assert cells.loc["x", "test/nmse_db"] == "-30.42 ± 0.10 (3)"
    assert cells.loc["x", "published/test/nmse_db"] == "-30.50"
    assert cells.loc["x", "test/nmse_db diff"] == "0.08"  # -30.4167 + 30.5, at the mean's 2 decimals
    # below 1: 4 significant digits of the mean, the std at the same decimals (std of .91 .92 .93: 0.01)
    assert cells.loc["x", "test/acc"] == "0.9200 ± 0.0100 (3)"


def test_a_single_run_cell_has_no_std():
    runs = pd.DataFrame({"run": ["a"], "status": ["completed"], "error": None, "model": ["y"],
                         "test/nmse_db": [-30.414], "test/acc": [0.5]})
    cells = paper_cells(summarize(runs)).iloc[0]
    assert (cells["test/nmse_db"], cells["test/acc"]) == ("-30.41 (1)", "0.5000 (1)")


# A gradient x lambda x seed sweep like PUDLE's table (PSNR of the two seeds, the published value).
PSNR = {("g_dec", "0.08"): [30.0, 31.0], ("g_dec", "0.12"): [32.0, 32.5],
        ("g_ae_ls", "0.08"): [28.0, 29.0], ("g_ae_ls", "0.12"): [27.0, 30.0]}
PUBLISHED = {("g_dec", "0.08"): 30.6, ("g_dec", "0.12"): 32.1,
             ("g_ae_ls", "0.08"): 28.4, ("g_ae_ls", "0.12"): 28.9}


def write_grad_lam_runs(root, extra=()):
    """The runs of PSNR (g_dec first), each also with ``extra`` overrides and a test/ssim of 0.9."""
    for i, ((grad, lam), psnrs) in enumerate(PSNR.items()):
        for seed, psnr in enumerate(psnrs):
            write_run(root, f"{i}{seed}", [f"model.grad={grad}", f"model.lam={lam}", f"seed={seed}", *extra],
                      {"test/psnr": psnr, "test/ssim": 0.9, "published/test/psnr": PUBLISHED[grad, lam]},
                      optimized="test/psnr")


def test_a_pivot_of_gradient_by_lambda_pools_the_seeds_of_completed_runs(tmp_path, capsys):
    write_grad_lam_runs(tmp_path)
    write_run(tmp_path, "failed", ["model.grad=g_dec", "model.lam=0.08", "seed=2"], {"test/psnr": 0.0},
              status="failed")  # never averaged in
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam", "--metrics", "test/psnr"]) == 1
    out = capsys.readouterr().out
    # the grid, rows and columns as the runs have them; each cell's mean, sample std and count by hand
    assert printed_table(out, "model.grad by model.lam:") == [
        {"model.grad": "g_dec", "0.08": "30.50 ± 0.71 (2)", "0.12": "32.25 ± 0.35 (2)"},
        {"model.grad": "g_ae_ls", "0.08": "28.50 ± 0.71 (2)", "0.12": "28.50 ± 2.12 (2)"}]
    assert printed_table(out, "published/test/psnr:") == [
        {"model.grad": "g_dec", "0.08": "30.60", "0.12": "32.10"},
        {"model.grad": "g_ae_ls", "0.08": "28.40", "0.12": "28.90"}]
    long = pd.read_csv(tmp_path / "report_pivot.csv")
    assert list(long.columns) == ["model.grad", "model.lam", "metric", "mean", "std", "count", "published", "diff"]
    assert list(zip(long["model.grad"], long["model.lam"])) == [
        ("g_dec", 0.08), ("g_dec", 0.12), ("g_ae_ls", 0.08), ("g_ae_ls", 0.12)]
    assert set(long["metric"]) == {"test/psnr"} and set(long["count"]) == {2}
    assert np.allclose(long["mean"], [30.5, 32.25, 28.5, 28.5])
    assert np.allclose(long["std"], np.array([1.0, 0.5, 1.0, 3.0]) / np.sqrt(2))  # |a - b| / sqrt(2)
    assert list(long["published"]) == [30.6, 32.1, 28.4, 28.9]
    assert np.allclose(long["diff"], np.array([30.5, 32.25, 28.5, 28.5]) - [30.6, 32.1, 28.4, 28.9])


# The authors' logged final values beside the paper's (PUDLE: a paper config's references.authors_log).
LOGGED = {("g_dec", "0.08"): 30.4, ("g_dec", "0.12"): 32.4, ("g_ae_ls", "0.08"): 28.0}


def test_a_further_reference_value_is_shown_beside_the_published_one_with_its_difference(tmp_path, capsys):
    for i, ((grad, lam), psnrs) in enumerate(PSNR.items()):
        logged = {"published/test/psnr authors_log": LOGGED[grad, lam]} if (grad, lam) in LOGGED else {}
        for seed, psnr in enumerate(psnrs):
            write_run(tmp_path, f"{i}{seed}", [f"model.grad={grad}", f"model.lam={lam}", f"seed={seed}"],
                      {"test/psnr": psnr, "published/test/psnr": PUBLISHED[grad, lam], **logged},
                      optimized="test/psnr")
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam"]) == 0
    out = capsys.readouterr().out
    assert printed_table(out, "published/test/psnr authors_log:") == [
        {"model.grad": "g_dec", "0.08": "30.40", "0.12": "32.40"},
        {"model.grad": "g_ae_ls", "0.08": "28.00", "0.12": ""}]  # no logged value there
    assert printed_table(out, "test/psnr mean - published/test/psnr authors_log:") == [
        {"model.grad": "g_dec", "0.08": "0.1000", "0.12": "-0.1500"},
        {"model.grad": "g_ae_ls", "0.08": "0.5000", "0.12": ""}]
    assert printed_table(out, "test/psnr mean - published/test/psnr:")[0] == {
        "model.grad": "g_dec", "0.08": "-0.1000", "0.12": "0.1500"}
    long = pd.read_csv(tmp_path / "report_pivot.csv").set_index(["model.grad", "model.lam"])
    assert long.loc[("g_dec", 0.12), "published authors_log"] == 32.4
    assert long.loc[("g_dec", 0.12), "diff authors_log"] == pytest.approx(32.25 - 32.4, abs=1e-12)
    assert np.isnan(long.loc[("g_ae_ls", 0.12), "published authors_log"])
    table = pd.read_csv(tmp_path / "report.csv").set_index(["model.grad", "model.lam"])
    assert table.loc[("g_dec", 0.08), "test/psnr diff authors_log"] == pytest.approx(30.5 - 30.4, abs=1e-12)
    row = [r for r in printed_table(out) if r["model.grad"] == "g_dec" and r["model.lam"] == "0.08"][0]
    assert (row["published/test/psnr"], row["test/psnr diff"]) == ("30.60", "-0.10")
    assert (row["published/test/psnr authors_log"], row["test/psnr diff authors_log"]) == ("30.40", "0.10")


def test_the_pivot_is_of_the_optimized_metric_unless_metrics_are_chosen(tmp_path, capsys):
    write_grad_lam_runs(tmp_path)
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam"]) == 0
    out = capsys.readouterr().out
    assert "test/psnr, mean ± std (n)" in out and "test/ssim, mean ± std (n)" not in out
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam", "--metrics", "test/*"]) == 0
    ssim = printed_table(capsys.readouterr().out, "test/ssim, mean ± std (n) of the completed runs, "
                         "model.grad by model.lam:")
    assert ssim[0] == {"model.grad": "g_dec", "0.08": "0.9000 ± 0.0000 (2)", "0.12": "0.9000 ± 0.0000 (2)"}
    assert set(pd.read_csv(tmp_path / "report_pivot.csv")["metric"]) == {"test/psnr", "test/ssim"}
    write_run(tmp_path, "other", ["model.grad=g_dec", "model.lam=0.08", "seed=2"], {"test/ssim": 0.8},
              optimized="test/ssim")
    with pytest.raises(SystemExit) as exit:
        report_main([str(tmp_path), "--pivot", "model.grad", "model.lam"])
    assert exit.value.code == 2 and "choose the metrics with --metrics" in capsys.readouterr().err


def test_pivot_rows_and_columns_numbers_in_numeric_order_others_as_they_come(tmp_path, capsys):
    cells = [(grad, lam) for grad in ("g_dec", "g_ae_ls") for lam in ("1e-3", "3e-4", "1e-4")]
    for i, (grad, lam) in enumerate(cells):
        write_run(tmp_path, str(i), [f"model.grad={grad}", f"model.lam={lam}"], {"test/psnr": 20.0 + i},
                  optimized="test/psnr")
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam"]) == 0
    grid = printed_table(capsys.readouterr().out, "model.grad by model.lam:")
    assert grid == [{"model.grad": "g_dec", "1e-4": "22.00 (1)", "3e-4": "21.00 (1)", "1e-3": "20.00 (1)"},
                    {"model.grad": "g_ae_ls", "1e-4": "25.00 (1)", "3e-4": "24.00 (1)", "1e-3": "23.00 (1)"}]
    assert list(grid[0]) == ["model.grad", "1e-4", "3e-4", "1e-3"]  # not string order (1e-3 < 1e-4)
    assert list(pd.read_csv(tmp_path / "report_pivot.csv")["mean"]) == [22.0, 21.0, 20.0, 25.0, 24.0, 23.0]


def test_a_key_left_at_its_default_comes_after_the_numbers_in_a_pivot_and_off_a_plot(tmp_path, capsys):
    cells = [(grad, lam) for grad in ("g_dec", "g_ae_ls") for lam in ("1e-3", None, "1e-4")]
    for i, (grad, lam) in enumerate(cells):
        write_run(tmp_path, str(i), [f"model.grad={grad}", *([f"model.lam={lam}"] if lam else [])],
                  {"test/psnr": 20.0 + i}, optimized="test/psnr")
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam"]) == 0
    grid = printed_table(capsys.readouterr().out, "model.grad by model.lam:")
    assert list(grid[0]) == ["model.grad", "1e-4", "1e-3", "(default)"]
    assert grid[0]["(default)"] == "21.00 (1)"
    points = plot_metric(load_runs([str(tmp_path)]), "test/psnr", "model.lam", tmp_path / "plot.png")
    numbered = points.dropna(subset=["model.lam"])  # the default runs have no place on a numeric axis
    assert sorted(numbered["model.lam"]) == [1e-4, 1e-4, 1e-3, 1e-3] and len(points) == 6


def test_a_pivot_refuses_to_pool_another_varying_override_or_an_unknown_one(tmp_path, capsys):
    write_grad_lam_runs(tmp_path, extra=["model.layers=4"])
    write_run(tmp_path, "deeper", ["model.grad=g_dec", "model.lam=0.08", "seed=0", "model.layers=8"],
              {"test/psnr": 40.0}, optimized="test/psnr")
    pooled = ("--pivot model.grad model.lam: the completed runs also differ in model.layers, which would be "
              "pooled into one cell; select the runs with a glob, or use --group-by")
    unknown = "--pivot model.gradd: not an override of these runs (model.grad, model.lam, seed, model.layers)"
    for pivot, message in ((["model.grad", "model.lam"], pooled), (["model.gradd", "model.lam"], unknown)):
        with pytest.raises(SystemExit) as exit:
            report_main([str(tmp_path), "--pivot", *pivot])
        assert exit.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"unroll-report: error: {message}"
    assert not (tmp_path / "report_pivot.csv").exists() and not (tmp_path / "report.csv").exists()
    record = json.loads((tmp_path / "deeper" / "metrics.json").read_text())
    (tmp_path / "deeper" / "metrics.json").write_text(json.dumps({**record, "status": "failed"}))
    # only the completed runs are pooled: a failed one may differ
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam"]) == 1
    assert pd.read_csv(tmp_path / "report_pivot.csv")["count"].tolist() == [2, 2, 2, 2]


def test_csvs_keep_mean_std_and_count_columns_the_printed_tables_and_latex_have_cells(tmp_path, capsys):
    write_grad_lam_runs(tmp_path)
    (tmp_path / "00" / "layers.csv").write_text("layer,test/psnr\n0,21.0\n1,30.0\n")
    (tmp_path / "01" / "layers.csv").write_text("layer,test/psnr\n0,22.0\n1,31.0\n")
    assert report_main([str(tmp_path), "--metrics", "test/psnr", "--layers"]) == 0
    table = pd.read_csv(tmp_path / "report.csv")
    assert list(table.columns) == ["model.grad", "model.lam", "test/psnr mean", "test/psnr std",
                                   "test/psnr count", "published/test/psnr", "test/psnr diff"]
    row = table.set_index(["model.grad", "model.lam"]).loc[("g_dec", 0.08)]
    assert row["test/psnr mean"] == 30.5 and row["test/psnr count"] == 2
    assert abs(row["test/psnr std"] - np.sqrt(0.5)) < 1e-12  # ddof=1: sqrt((0.5² + 0.5²) / 1)
    layers = pd.read_csv(tmp_path / "report_layers.csv")
    assert list(layers.columns) == ["model.grad", "model.lam", "layer", "test/psnr mean", "test/psnr std",
                                    "test/psnr count"]
    assert list(layers["test/psnr mean"]) == [21.5, 30.5]
    out = capsys.readouterr().out
    assert {"model.grad": "g_dec", "model.lam": "0.08", "test/psnr": "30.50 ± 0.71 (2)",
            "published/test/psnr": "30.60", "test/psnr diff": "-0.10"} in printed_table(out)
    assert printed_table(out, "layers.csv:")[1] == {"model.grad": "g_dec", "model.lam": "0.08", "layer": "1",
                                                   "test/psnr": "30.50 ± 0.71 (2)"}
    tex = (tmp_path / "report.tex").read_text()
    assert r"g\_dec & 0.08 & 30.50 $\pm$ 0.71 (2) & 30.60 & -0.10 \\" in tex and "±" not in tex


def test_a_per_item_table_is_grouped_by_the_index_columns_its_run_declared(tmp_path, capsys):
    """items.csv of two seeds per model, declared as indexed by (image, sigma) by the RunRecorder."""
    from unroll_cli.record.recorder import RunRecorder

    values = {}
    for model in ("a", "b"):
        for seed in (0, 1):
            name = f"{model}{seed}"
            write_run(tmp_path, name, [f"model={model}", f"seed={seed}"], {"test/psnr": 20.0 + seed})
            items = pd.DataFrame({"image": ["x.png", "x.png", "y.png"], "sigma": [15, 25, 25],
                                  "psnr": [30.0 + seed, 25.0 + seed, 26.0 + 2 * seed]})
            RunRecorder(tmp_path / name, tensorboard=False).write_table("items.csv", items, index=["image", "sigma"])
            values[(model, seed)] = items
    assert report_main([str(tmp_path), "--table", "items.csv"]) == 0
    table = pd.read_csv(tmp_path / "report_items.csv")
    assert list(table.columns[:3]) == ["model", "image", "sigma"] and len(table) == 2 * 3
    row = table[(table["model"] == "b") & (table["image"] == "y.png")].iloc[0]
    assert row["psnr mean"] == pytest.approx((26.0 + 28.0) / 2) and row["psnr count"] == 2
    assert row["psnr std"] == pytest.approx(np.std([26.0, 28.0], ddof=1))
    assert "items.csv:" in capsys.readouterr().out


def test_tiny_values_are_printed_in_scientific_notation():
    runs = pd.DataFrame({"run": ["a", "b"], "status": ["completed"] * 2, "error": None, "model": ["x", "x"],
                         "seed": ["0", "1"], "test/rmse": [3.1e-6, 5.1e-6]})
    cells = paper_cells(summarize(runs)).iloc[0]
    # mean 4.1e-6; std of 3.1e-6 and 5.1e-6 (ddof 1): 2e-6 / sqrt(2) = 1.414e-6
    assert cells["test/rmse"] == "4.10e-06 ± 1.41e-06 (2)"


def test_a_sweeps_jobs_are_read_in_launch_order(tmp_path):
    for job in (0, 1, 2, 10, 11):
        (tmp_path / "sweep" / str(job)).mkdir(parents=True)
        (tmp_path / "sweep" / str(job) / "metrics.json").write_text("{}")
    assert [p.name for p in find_runs([str(tmp_path / "sweep")])] == ["0", "1", "2", "10", "11"]
