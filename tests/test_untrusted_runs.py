"""Issue 21's holes, tried as a hostile user would: environment variables that make programs run code,
sweeps over Hydra's own settings, and run directories read by unroll-eval and unroll-compress. Each case
asserts the message naming the key, the exit code, that nothing ran and that nothing outside the run
directory changed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY, read_metrics, run_cli
from unroll_cli.compress import main as compress_main
from unroll_cli.reevaluate import main as eval_main
from unroll_cli.report.aggregate import main as report_main

FAST = [*TINY, "tensorboard=false"]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("variable", ["CC", "CXX", "PATH", "LD_PRELOAD", "PYTHONPATH", "BASH_ENV", "TORCHINDUCTOR_CACHE_DIR",
                                      "HOME"])
def test_env_set_takes_only_the_allowed_variables(tmp_path, variable):
    before = listing(tmp_path)
    result = run_cli([*FAST, f"+hydra.job.env_set.{variable}={tmp_path / 'evil'}", "trainer.compile=true",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and f"hydra.job.env_set.{variable} is not allowed" in output
    assert "Traceback" not in output and listing(tmp_path) == before  # no run directory either


def test_env_set_of_a_thread_count_runs(tmp_path):
    result = run_cli([*FAST, "+hydra.job.env_set.OMP_NUM_THREADS=1", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"


@pytest.mark.parametrize("override", ["+trusted_env=[CXX]", "trusted_env=[CXX]", "+trusted_env.0=CXX"])
def test_trusted_env_cannot_come_from_the_command_line(tmp_path, override):
    result = run_cli([*FAST, override, "+hydra.job.env_set.CXX=/bin/evil", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    assert result.returncode == 2 and "trusted_env cannot be set from the command line" in result.stderr
    assert not (tmp_path / "run").exists()


def test_trusted_env_in_a_config_file_allows_a_variable(tmp_path):
    (tmp_path / "my_conf/experiment").mkdir(parents=True)
    (tmp_path / "my_conf/experiment/env.yaml").write_text(
        "# @package _global_\ntrusted_env: [MY_SETTING]\nhydra:\n  job:\n    env_set:\n      MY_SETTING: 'on'\n")
    result = run_cli([*FAST, f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "+experiment=env",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("param", [
    "hydra.job_logging.handlers.console.class: choice(subprocess.Popen)",
    "hydra.job.env_set.CXX: choice(/bin/evil)",
    "+hydra.callbacks.x._target_: choice(os.system)"])
def test_a_sweepers_params_may_not_vary_hydras_settings(tmp_path, param):
    """hydra.sweeper.params from a user's config file: Hydra would apply a per-job hydra value (its
    logging handler, its environment) before the job could check it."""
    (tmp_path / "my_conf/hparams_search").mkdir(parents=True)
    key, value = param.split(": ")
    (tmp_path / "my_conf/hparams_search/evil.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: unroll_optuna\n"
        f"hydra:\n  sweeper:\n    n_trials: 1\n    params:\n      {key}: {value}\n")
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *FAST, f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "hparams_search=evil",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and f"hydra.sweeper.params.{key} is not allowed" in output, output
    assert not sweep.exists() and not (tmp_path / "evil").exists()


# ----------------------------------------------------------------------------- run directories are data
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    result = run_cli([*FAST, "model=lista_cp", f"hydra.run.dir={folder / 'run'}"], cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "run"


def crafted_copy(finished: Path, folder: Path, change) -> Path:
    """A copy of a finished run whose checkpoints' stored config ``change`` edits."""
    run_dir = folder / "crafted"
    shutil.copytree(finished, run_dir, symlinks=True)
    for name in ("last.pt", "best.pt"):
        file = run_dir / "checkpoints" / name
        state = torch.load(file, weights_only=True)
        change(state["config"])
        file.unlink()  # hard links are shared with the original run
        torch.save(state, file)
    return run_dir


@pytest.mark.parametrize("key, change", [
    ("model._target_", lambda c: c["model"].update(_target_="collections.OrderedDict")),
    ("data._target_", lambda c: c["data"].update(_target_="subprocess.Popen")),
    ("optim._target_", lambda c: c["optim"].update(_target_="unroll_cli.run.os.system")),
    ("data._target_", lambda c: c.update(trusted_packages=["subprocess"]) or c["data"].update(
        _target_="subprocess.Popen")),
    ("model.layers", lambda c: c["model"].update(layers=-3)),
])
def test_unroll_compress_builds_nothing_from_a_checkpoints_config(finished, tmp_path, capsys, key, change):
    """The config is composed again from the run's overrides and checked as a command line's; a
    checkpoint whose config differs from it is refused, naming the key (nothing is built from it)."""
    run_dir = crafted_copy(finished, tmp_path, change)
    with pytest.raises(SystemExit) as exit_:
        compress_main([str(run_dir), "--structure", "butterfly", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"{key}: " in error and "another config" in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("added, named", [
    (["data._target_=subprocess.Popen"], "data._target_"),
    (["+trusted_packages=[subprocess]", "data._target_=subprocess.Popen"], "data._target_"),
    (["model.layers=-3"], "model.layers=-3"),
    (["+model.code=1"], "model.code"),
])
def test_unroll_compress_checks_a_runs_overrides_like_a_command_line(finished, tmp_path, capsys, added, named):
    run_dir = tmp_path / "crafted"
    shutil.copytree(finished, run_dir, symlinks=True)
    overrides = run_dir / ".hydra/overrides.yaml"
    overrides.write_text(yaml.safe_dump([*yaml.safe_load(overrides.read_text()), *added]))
    with pytest.raises(SystemExit) as exit_:
        compress_main([str(run_dir), "--structure", "butterfly", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert named in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "out").exists()


def test_trusted_packages_of_a_run_directory_do_not_widen_unroll_eval(finished, tmp_path, capsys):
    """A run directory's overrides may add a config folder; what it trusts is not trusted by a reader."""
    import shutil

    run_dir = tmp_path / "crafted"
    shutil.copytree(finished, run_dir, symlinks=True)
    (tmp_path / "conf/experiment").mkdir(parents=True)
    (tmp_path / "conf/experiment/x.yaml").write_text(
        "# @package _global_\ntrusted_packages: [subprocess]\noptim:\n  _target_: subprocess.Popen\n")
    overrides = run_dir / ".hydra/overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- hydra.searchpath=[file://{tmp_path / 'conf'}]\n- +experiment=x\n")
    assert eval_main([str(run_dir), f"hydra.run.dir={tmp_path / 'out'}"]) == 2
    error = capsys.readouterr().err
    assert "optim._target_='subprocess.Popen' is not allowed" in error, error
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_a_run_of_your_own_model_is_evaluated_with_trust_named_on_the_readers_command_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "my_eval_models.py").write_text(
        "from unroll_cli.models.lista import LISTACP\n\n\nclass MyLISTACP(LISTACP):\n    pass\n")
    (tmp_path / "my_conf/model").mkdir(parents=True)
    (tmp_path / "my_conf/model/mine.yaml").write_text(
        "# @package _global_\ntrusted_packages: [my_eval_models]\nmodel:\n  _target_: my_eval_models.MyLISTACP\n"
        "  name: mine\n  task: sparse_coding\n  layers: 4\n  lam: 0.4\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{Path(__file__).parents[1]}"}
    trained = run_cli([*FAST, f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "model=mine",
                       f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, process=True)
    assert trained.returncode == 0, trained.stderr

    def unroll_eval(*args):
        return subprocess.run([sys.executable, "-c", "from unroll_cli.cli import eval_main; eval_main()",
                               str(tmp_path / "run"), *args], cwd=tmp_path, env={**os.environ, **env},
                              capture_output=True, text=True, timeout=300)

    refused = unroll_eval(f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode == 2 and "model._target_='my_eval_models.MyLISTACP' is not allowed" in refused.stderr
    trusted = unroll_eval("--trust", "my_eval_models", f"hydra.run.dir={tmp_path / 'trusted'}")
    assert trusted.returncode == 0, trusted.stderr
    assert read_metrics(tmp_path / "trusted")["metrics"] == read_metrics(tmp_path / "run")["metrics"]


# ----------------------------------------------------------------------------- folders that are not ours
def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry below ``folder`` with its contents (a link's target), to see that nothing changed."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        entries[key] = f"-> {os.readlink(path)}" if path.is_symlink() else (path.read_bytes() if path.is_file() else "dir")
    return entries


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    result = run_cli(["-m", *FAST, "trainer.max_epochs=1", "seed=0,1", f"hydra.sweep.dir={folder / 'sweep'}"],
                     cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "sweep"


@pytest.mark.parametrize("values", [["seed=2,3"], ["seed=1,0"], ["seed=0"], ["data.m=24", "seed=0,1"]])
def test_a_sweep_into_a_finished_sweep_of_other_jobs_changes_nothing_there(finished_sweep, tmp_path, capsys, values):
    """Refused before Hydra writes its multirun.yaml: the finished sweep's report is what it was."""
    before = snapshot(finished_sweep)
    result = run_cli(["-m", *FAST, "trainer.max_epochs=1", *values, f"hydra.sweep.dir={finished_sweep}"],
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"hydra.sweep.dir={finished_sweep} holds" in result.stderr and "nothing was changed" in result.stderr
    assert snapshot(finished_sweep) == before
    assert report_main([str(finished_sweep)]) == 0
    assert "missing" not in capsys.readouterr().out


def test_a_sweep_with_values_appended_extends_the_finished_one(finished_sweep, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep, symlinks=True)
    result = run_cli(["-m", *FAST, "trainer.max_epochs=1", "seed=0,1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(already completed)") == 2 and read_metrics(sweep / "2")["status"] == "completed"
    assert report_main([str(sweep)]) == 0 and "missing" not in capsys.readouterr().out


def test_a_huge_grid_in_a_multirun_yaml_is_not_expanded(finished_sweep, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep, symlinks=True)
    plan = yaml.safe_load((sweep / "multirun.yaml").read_text())
    plan["hydra"]["overrides"]["task"] += ["data.m=range(0,1000000000)", "data.n=range(0,1000000000)"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(plan))
    assert report_main([str(sweep)]) == 1
    assert "plans more than 100000 jobs" in capsys.readouterr().out


@pytest.mark.parametrize("make", [
    lambda run, outside: (run / "history.csv").write_text("my,own\n1,2\n"),
    lambda run, outside: (run / "checkpoints").mkdir() or (run / "checkpoints/notes.txt").write_text("mine"),
    lambda run, outside: (run / "results.md").write_text("# my notes\n"),
])
def test_a_folder_that_is_not_a_run_is_refused_and_left_as_it_was(tmp_path, make):
    run_dir, outside = tmp_path / "folder", tmp_path / "outside"
    run_dir.mkdir()
    outside.mkdir()
    make(run_dir, outside)
    before = snapshot(tmp_path)
    result = run_cli([*FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "is not empty and holds no run of this tool" in output, output
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("folder/.lock") and not k.endswith(".log")}
    assert after == before


@pytest.mark.parametrize("name", [".lock", "checkpoints.d", "figures", "tb", "checkpoints", "metrics.json"])
def test_a_symbolic_link_in_a_run_directory_is_never_written_through(tmp_path, name):
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    run_dir.mkdir()
    (outside / "sub").mkdir(parents=True)
    (outside / "file").write_text("not yours")
    target = outside / ("file" if name in (".lock", "metrics.json") else "sub")
    (run_dir / name).symlink_to(target)
    before = snapshot(outside)
    result = run_cli([*FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    assert f"{run_dir / name}" in output and ("symbolic link" in output), output
    assert snapshot(outside) == before


def test_a_run_directory_that_is_a_file_is_one_message(tmp_path):
    (tmp_path / "run").write_text("a file")
    result = run_cli([*FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert (tmp_path / "run").read_text() == "a file"


# ----------------------------------------------------------------------------- run files of the wrong type
@pytest.mark.parametrize("field, value", [
    ("status", "completed!"), ("status", {"a": 1}), ("status", None), ("error", 3), ("params", "many"),
    ("wall_s", "slow"), ("metrics", {"test/nmse_db": "good"}), ("metrics", [1, 2]), ("optimized", "yes")])
def test_unroll_report_names_a_run_field_of_the_wrong_type(finished, tmp_path, capsys, field, value):
    import json
    import shutil

    from unroll_cli.report.aggregate import main as report_main

    run_dir = tmp_path / "runs/spoofed"
    shutil.copytree(finished, run_dir, symlinks=True)
    record = json.loads((run_dir / "metrics.json").read_text())
    record[field] = value
    (run_dir / "metrics.json").write_text(json.dumps(record))
    assert report_main([str(tmp_path / "runs")]) == 1  # never a completed run
    printed = capsys.readouterr().out
    assert "unreadable" in printed and f"the field {field} is not" in printed, printed


def test_every_file_of_a_run_has_one_mode(finished):
    """metrics.json, results.md and the tables were private (0600) while the log and checkpoints were not."""
    import stat

    files = [p for p in finished.rglob("*") if p.is_file() and not p.is_symlink() and p.name != ".lock"]
    modes = {p.relative_to(finished).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert len(set(modes.values())) == 1, modes


def test_a_metrics_pattern_that_matches_nothing_is_refused_naming_what_there_is(finished, capsys):
    from unroll_cli.report.aggregate import main as report_main

    with pytest.raises(SystemExit) as exit_:
        report_main([str(finished), "--metrics", "test/psnr*"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--metrics test/psnr* matches no metric of these runs; they report: " in error and "test/nmse_db" in error


@pytest.mark.parametrize("content", [b"", b'garbage\x00,,\n"unterminated\n', b"\xff\xfe\x00bad"])
def test_unroll_report_names_a_per_run_table_that_is_not_a_table_and_writes_nothing(finished, tmp_path, capsys,
                                                                                 content):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, symlinks=True)
    (run_dir / "layers.csv").write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        report_main([str(run_dir), "--layers", "--out", str(tmp_path / "report")])
    assert exit_.value.code == 1
    error = capsys.readouterr().err
    assert f"{run_dir / 'layers.csv'}: not a CSV table" in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("tool", ["report", "compress"])
def test_an_output_folder_that_is_a_file_is_refused_and_kept(finished, tmp_path, capsys, tool):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    main, args = {"report": (report_main, [str(finished)]),
                  "compress": (compress_main, [str(finished), "--structure", "butterfly"])}[tool]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(out)])
    assert exit_.value.code == 2
    assert f"{out} is a file, not a directory" in capsys.readouterr().err
    assert out.read_text() == "mine"
