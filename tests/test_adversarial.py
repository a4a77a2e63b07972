"""The CLI as a careless or hostile user drives it: bad values, code smuggled into the config, run
directories reused or shared, checkpoints and records damaged, signals at random moments.

Each bad input must give one message naming the key or the file, a non-zero exit, no traceback,
nothing marked completed and nothing earlier lost; no code named by the input may run (payloads
would create a marker file). Data files that would run code are in ``test_untrusted_data.py``.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, read_metrics, run_cli, tiny, wait_for_history
from unroll_cli.errors import ConfigError
from unroll_cli.run import run

FAST = [*TINY, "tensorboard=false"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same arithmetic in every process (exact resume checks)


def assert_refused(result: subprocess.CompletedProcess, named: str, run_dir: Path | None = None) -> None:
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert named in output, output
    assert "Traceback" not in output, output
    if run_dir is not None and (run_dir / "metrics.json").exists():
        assert read_metrics(run_dir)["status"] != "completed"


# ----------------------------------------------------------------------------- config values
@pytest.mark.parametrize("overrides, named", [
    (["optim.lr=inf"], "optim.lr"),
    (["model.lam=inf"], "model.lam"),
    (["data.snr_db=nan"], "data.snr_db"),
    (["data.kappa=-inf"], "data.kappa"),
    (["trainer.grad_clip=-1"], "trainer.grad_clip"),
    (["data.support_tol=-1"], "data.support_tol"),
    (["trainer.patience=-1"], "trainer.patience"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs"),
    (["+seeed=3"], "seeed"),
    (["+paper.x=1"], "paper.x"),
    (["paper=chen2018", "+paper.extra=1"], "paper.extra"),
    (["optimized_metric=test/accc"], "optimized_metric=test/accc"),
    (["data.n_val=100000000"], "data.n_val"),
    (["model.layers=100000000"], "model.layers"),
    (["~sched"], "sched"),
    (["optim.betas=[2,0.9]"], "optim"),
    (["sched=step", "sched.step_size=0"], "sched"),
    (["trainer=layerwise", "trainer.val_every_steps=0"], "trainer.val_every_steps"),
    (["--experimental-rerun", "config.pickle"], "--experimental-rerun"),
    (["-cd", "."], "hydra.searchpath"),
])
def test_a_bad_value_is_one_message_naming_it_before_any_work(tmp_path, overrides, named):
    run_dir = tmp_path / "run"
    flags = overrides if overrides[0].startswith("-") else []  # Hydra's flags come before the overrides
    result = run_cli([*flags, *tiny(*overrides[len(flags):]), "tensorboard=false", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert_refused(result, named, run_dir)
    assert result.returncode == 2
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints").exists()


def test_the_memory_refusal_gives_the_estimate(tmp_path):
    result = run_cli([*FAST, "data.n_val=100000000", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_refused(result, "data.n_val=100000000: this run would need about")
    # at least the validation set itself: 1e8 pairs (y, x) of 20 + 40 float32 values = 24 GB
    amount, unit = re.search(r"need about ([\d.]+) (GB|TB|PB)", result.stdout + result.stderr).groups()
    assert float(amount) * {"GB": 1, "TB": 1e3, "PB": 1e6}[unit] >= 24


@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=pytest.mark.slow),
                                      pytest.param("submitit_local", marks=pytest.mark.slow)])
def test_a_sweep_attempts_every_job_and_records_each_failure(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *FAST, "data.m=-5,20", "seed=0,1", f"hydra/launcher={launcher}",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode != 0 and "data.m=-5 is not allowed" in result.stdout + result.stderr
    swept = lambda record: tuple(o for o in record["overrides"] if o.startswith(("data.m=", "seed=")))  # noqa: E731
    records = {swept(r): r for r in map(read_metrics, sweep.glob("[0-9]*"))}
    assert sorted(records) == [("data.m=-5", "seed=0"), ("data.m=-5", "seed=1"),
                               ("data.m=20", "seed=0"), ("data.m=20", "seed=1")]
    for (m, _), record in records.items():
        assert record["status"] == ("failed" if m == "data.m=-5" else "completed")
        assert m != "data.m=-5" or "data.m=-5 is not allowed" in record["error"]


def test_a_sweep_over_missing_data_records_each_job_naming_the_folder(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "data=mnist", f"data.root={tmp_path / 'nowhere'}", "data.download=false",
                      "model=ml_ista", "trainer.progress=false", "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert_refused(result, "nowhere")
    records = [read_metrics(job) for job in sorted(sweep.glob("[0-9]*"))]
    assert len(records) == 2 and all(r["status"] == "failed" for r in records)
    assert all("DatasetNotFoundError" in r["error"] and "nowhere" in r["error"] for r in records)


# ----------------------------------------------------------------------------- code from the config
def payload(marker: Path) -> str:
    """A node that runs ``touch marker`` when Hydra instantiates it, spelled inside the project."""
    return f"{{_target_:unroll_cli.run.os.system,command:'touch {marker}'}}"


@pytest.mark.parametrize("make_overrides, named", [
    (lambda m: ["optim._target_=unroll_cli.run.os.system"], "resolves to posix.system"),
    (lambda m: ["optim._target_=os.system"], "optim._target_"),
    (lambda m: [f"+hydra.callbacks.evil={payload(m)}"], "hydra.callbacks.evil._target_"),
    (lambda m: ["~sched", f"++sched.gamma={payload(m)}"], "sched.gamma._target_"),
    (lambda m: ["hydra/sweeper=unroll_optuna", "hydra.sweeper.pruner=null",
                f"+hydra.sweeper.pruner={payload(m)}"], "hydra.sweeper.pruner._target_"),
    (lambda m: ["hydra.job_logging.handlers.console.class=subprocess.Popen",
                f"+hydra.job_logging.handlers.console.args=[touch,{m}]"], "hydra.job_logging.handlers.console.class"),
    (lambda m: ["+trusted_packages=[os]", "optim._target_=os.system"], "trusted_packages"),
    (lambda m: ["+hydra.job.env_set.LD_PRELOAD=/nonexistent.so"], "LD_PRELOAD"),
    (lambda m: ["hydra/sweeper=unroll_optuna", "hydra.sweeper.sampler=null",
                f"+hydra.sweeper.sampler={payload(m)}"], "hydra.sweeper.sampler._target_"),
    (lambda m: ["hydra.launcher._target_=unroll_cli.run.os.system"], "hydra.launcher._target_"),
    (lambda m: ["trainer._target_=unroll_cli.run.os.system"], "trainer._target_"),
])
def test_code_named_in_an_override_never_runs(tmp_path, make_overrides, named):
    marker = tmp_path / "marker"
    result = run_cli(["-m", *FAST, *make_overrides(marker), f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                     cwd=tmp_path)
    assert_refused(result, named)
    assert not marker.exists()
    # Hydra's own nodes are refused before any job starts; the run's nodes by the job, recorded as failed
    assert all(read_metrics(file.parent)["status"] == "failed" for file in tmp_path.glob("sweep/*/metrics.json"))


def test_a_sweep_search_space_cannot_name_code_either(tmp_path):
    marker, sweep = tmp_path / "marker", tmp_path / "sweep"
    result = run_cli(["-m", *FAST, "hydra/sweeper=unroll_optuna", "hydra.sweeper.n_trials=1",
                      "optim._target_=choice(unroll_cli.run.os.system)", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert_refused(result, "resolves to posix.system")
    assert not marker.exists()
    assert read_metrics(sweep / "0")["status"] == "failed"  # the trial is recorded with its error


@pytest.mark.slow
def test_trusted_packages_in_a_config_file_allow_the_users_own_classes(tmp_path):
    """A user's optimizer class runs when a config file of theirs trusts its package, and only then."""
    (tmp_path / "my_optim.py").write_text(
        "import pathlib, torch\n\n"
        "class MarkedAdam(torch.optim.Adam):\n"
        "    def __init__(self, params, **kwargs):\n"
        "        pathlib.Path('used').touch()\n"
        "        super().__init__(params, **kwargs)\n")
    (tmp_path / "my_conf/experiment").mkdir(parents=True)
    (tmp_path / "my_conf/experiment/mine.yaml").write_text(
        "# @package _global_\ntrusted_packages: [my_optim]\noptim:\n  _target_: my_optim.MarkedAdam\n")
    search = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    refused = run_cli([*FAST, "optim._target_=my_optim.MarkedAdam", f"hydra.run.dir={tmp_path / 'a'}"],
                      cwd=tmp_path)
    assert_refused(refused, "optim._target_='my_optim.MarkedAdam' is not allowed")
    assert not (tmp_path / "used").exists()
    trusted = run_cli([*FAST, search, "+experiment=mine", f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path, process=True)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert (tmp_path / "used").exists() and read_metrics(tmp_path / "b")["status"] == "completed"


def test_a_crafted_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "marker"

    class Touch:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "old/checkpoints").mkdir(parents=True)
    (tmp_path / "old/checkpoints/last.pt").write_bytes(pickle.dumps({"model": Touch()}))
    result = run_cli([*FAST, f"resume={tmp_path / 'old'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_refused(result, "last.pt is not a readable checkpoint")
    assert not marker.exists()


# ----------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One completed run of FAST; tests that damage it work on a copy (:func:`copy_of`)."""
    folder = tmp_path_factory.mktemp("finished")
    result = run_cli([*FAST, f"hydra.run.dir={folder / 'run'}"], cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "run"


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    return copy


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.suffix != ".log" and p.name != ".lock"}


def test_a_run_directory_holding_another_run_is_refused_and_left_as_it_was(tmp_path, finished):
    run_dir = finished
    before = snapshot(run_dir)
    result = run_cli([*FAST, "model=alista", "trainer.checkpoint=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert_refused(result, "holds another run")
    assert result.returncode == 2
    assert snapshot(run_dir) == before  # metrics.json, .hydra/, checkpoints: the earlier run's, intact


@pytest.mark.slow
def test_a_second_process_on_a_busy_run_directory_is_refused_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **ONE_THREAD}
    args = [sys.executable, "-m", "unroll_cli.cli", *FAST, "trainer.max_epochs=100000", f"hydra.run.dir={run_dir}"]
    with (tmp_path / "first.log").open("w") as sink:
        first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for_history(run_dir, 1, first)
            second = run_cli(args[3:], cwd=tmp_path)
            assert_refused(second, f"in use by process {first.pid}")
            assert first.poll() is None  # the first run goes on
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)
    assert read_metrics(run_dir)["status"] == "interrupted"


@pytest.mark.parametrize("make_resume, named", [
    (lambda tmp: tmp, "no checkpoint at"),  # a directory that is not a run
    (lambda tmp: (tmp / "notes.txt").write_text("hello") and tmp / "notes.txt", "is not a readable checkpoint"),
])
def test_resume_from_something_that_is_not_a_run_is_refused(tmp_path, make_resume, named):
    target = make_resume(tmp_path)
    result = run_cli([*FAST, f"resume={target}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_refused(result, named)
    assert str(target) in result.stdout + result.stderr


def test_a_truncated_checkpoint_is_refused_naming_it(tmp_path, finished):
    run_dir = copy_of(finished, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()  # a hard link may share the bytes with best.pt: write a new file
    last.write_bytes(data[: len(data) // 2])
    result = run_cli([*FAST, f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'new'}"], cwd=tmp_path)
    assert_refused(result, "last.pt is not a readable checkpoint")


@pytest.mark.parametrize("changed, named", [
    ("optim.lr=0.01", "optim.lr"),
    ("data.matrix_seed=5", "data.matrix_seed"),
    ("model=alista", "model._target_"),
])
def test_resume_into_another_problem_or_model_is_refused_naming_the_keys(tmp_path, finished, changed, named):
    result = run_cli([*FAST, changed, f"resume={finished}", f"hydra.run.dir={tmp_path / 'new'}"], cwd=tmp_path)
    assert_refused(result, named)
    assert "may change" in result.stdout + result.stderr and not (tmp_path / "new" / "metrics.json").exists()


def test_a_checkpoint_of_another_device_kind_is_refused(tiny_cfg, tmp_path):
    run(tiny_cfg("tensorboard=false", "device=cpu"), tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.pt"
    state = torch.load(last, weights_only=True)
    last.unlink()
    torch.save({**state, "device": "cuda"}, last)
    with pytest.raises(ConfigError, match="written on cuda, this run is on cpu"):
        run(tiny_cfg("tensorboard=false", "device=cpu", f"resume={tmp_path / 'run'}"), tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("value, refused", [("supervised", False), ("lasso", True)])
def test_an_option_added_since_the_checkpoint_resumes_at_its_default_only(tiny_cfg, tmp_path, value, refused):
    """A checkpoint written before ``data.loss`` existed (its config lacks the key) resumes when the
    run keeps the schema's default, which is what the older version did, and is refused otherwise."""
    run(tiny_cfg("tensorboard=false"), tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.pt"
    state = torch.load(last, weights_only=True)
    del state["config"]["data"]["loss"]
    last.unlink()
    torch.save(state, last)
    again = tiny_cfg("tensorboard=false", "trainer.max_epochs=3", f"data.loss={value}", f"resume={tmp_path / 'run'}")
    if refused:
        with pytest.raises(ConfigError, match=r"data.loss: '<absent>' -> 'lasso'"):
            run(again, tmp_path / "new")
    else:
        run(again, tmp_path / "new")
        assert read_metrics(tmp_path / "new")["epochs"] == 3


def test_a_changeable_key_is_applied_on_resume(tmp_path, finished):
    result = run_cli([*FAST, "trainer.max_epochs=3", f"resume={finished}", f"hydra.run.dir={tmp_path / 'new'}"],
                     cwd=tmp_path)  # the finished run has 2 epochs
    assert result.returncode == 0, result.stderr
    assert read_metrics(tmp_path / "new")["epochs"] == 3


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]"])
def test_an_unreadable_record_is_kept_aside_and_the_job_runs_again(tmp_path, finished, garbage):
    run_dir = copy_of(finished, tmp_path)
    (run_dir / "metrics.json").write_text(garbage)
    again = run_cli([*FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "unreadable" in again.stdout + again.stderr
    assert read_metrics(run_dir)["status"] == "completed"
    (aside,) = run_dir.glob("metrics.json.unreadable-*")
    assert aside.read_text() == garbage


@pytest.mark.slow
def test_an_error_after_ctrl_c_reads_as_the_interrupt(tmp_path):
    """Ctrl-C inside a library's import can surface as another error (seen: a RecursionError while the
    optimizer was checked); once SIGINT has arrived, any refusal exits as interrupted (130), not as bad input."""
    code = ("import sys; from unroll_cli import cli, interrupts; interrupts._interrupted = True; "
            f"sys.argv = ['unroll-train', 'data.m=-5', 'hydra.run.dir={tmp_path / 'run'}']; cli.train_main()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 130 and "interrupted" in result.stderr and "data.m" not in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_an_error_in_an_import_after_ctrl_c_reads_as_the_interrupt(tmp_path, monkeypatch):
    """The same while the command line is checked, before Hydra (seen: scipy's import half done when
    SIGINT came, a RecursionError out of numpy)."""
    from unroll_cli import command_line, interrupts

    def half_imported(argv):
        interrupts._interrupted = True
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(command_line, "check_command_line", half_imported)
    monkeypatch.setattr(interrupts, "_interrupted", False)
    result = run_cli([*FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 130 and result.stderr == "unroll-train: interrupted\n"


def test_ctrl_c_during_the_start_up_imports_is_held_until_they_are_done(monkeypatch):
    """A KeyboardInterrupt raised inside torch's import can abort the process from its C++ code: the
    start-up only remembers the signal, and raises once its block is done."""
    from unroll_cli import interrupts

    monkeypatch.setattr(interrupts, "_interrupted", False)
    with interrupts.held():  # no signal: nothing raised
        pass
    previous = signal.getsignal(signal.SIGINT)
    finished = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run: it raised nothing here
                finished = True
        assert finished and interrupts.interrupted()
        assert signal.getsignal(signal.SIGINT) is interrupts._on_sigint  # raising again afterwards
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_start_up_is_one_line_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "unroll_cli.cli", *FAST, f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)  # importing hydra and torch, composing the config
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "run" / "metrics.json").exists() or \
        read_metrics(tmp_path / "run")["status"] == "interrupted"


# ----------------------------------------------------------------------------- resume is exact
def test_resume_into_a_new_directory_keeps_the_best_epoch(tiny_cfg, tmp_path, one_thread):
    """At lr 0.1 the validation NMSE is best after epoch 1 and worse after 2 and 3: a run resumed after
    epoch 1 into a new directory must still evaluate epoch 1's model, as the uninterrupted run does."""
    common = ("model=lista_cp", "optim.lr=0.1", "tensorboard=false")
    straight = run(tiny_cfg(*common, "trainer.max_epochs=3"), tmp_path / "straight")
    history = [row["val/nmse_db"] for row in torch.load(tmp_path / "straight/checkpoints/last.pt",
                                                        weights_only=True)["history"]]
    assert history.index(min(history)) == 0  # the premise: the best epoch is the first
    run(tiny_cfg(*common, "trainer.max_epochs=1"), tmp_path / "first")
    resumed = run(tiny_cfg(*common, "trainer.max_epochs=3", f"resume={tmp_path / 'first'}"), tmp_path / "resumed")
    assert resumed == straight
    assert read_metrics(tmp_path / "resumed")["metrics"] == read_metrics(tmp_path / "straight")["metrics"]
    assert torch.load(tmp_path / "resumed/checkpoints/best.pt", weights_only=True)["epoch"] == 1


def assert_consistent_pair(run_dir: Path) -> None:
    """checkpoints/ holds one save: best.pt is the epoch last.pt calls best (epoch - stale)."""
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    best_file = run_dir / "checkpoints/best.pt"
    if last["epoch"] == 0:
        assert not best_file.exists()
        return
    best = torch.load(best_file, weights_only=True)
    assert best["epoch"] == last["epoch"] - last["stale"]
    assert best["best"] == last["best"]


KILL_ARGS = [*FAST, "model=lista_cp", "optim.lr=0.02", "trainer.max_epochs=24", "trainer.steps_per_epoch=25"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The metrics of the run that the interrupted ones must reach exactly."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli([*KILL_ARGS, f"hydra.run.dir={folder / 'run'}"], cwd=folder, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    return read_metrics(folder / "run")["metrics"]


@pytest.mark.parametrize("sig, into", [(signal.SIGKILL, "same"), pytest.param(signal.SIGTERM, "new", marks=pytest.mark.slow),
                                       pytest.param(signal.SIGINT, "same", marks=pytest.mark.slow),
                                       pytest.param(signal.SIGKILL, "new", marks=pytest.mark.slow)])
def test_killed_at_a_random_moment_the_pair_stays_consistent_and_resume_is_exact(tmp_path, uninterrupted, sig, into):
    rng = random.Random(int(sig) * 10 + len(into))
    run_dir = tmp_path / "run"
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-m", "unroll_cli.cli", *KILL_ARGS, f"hydra.run.dir={run_dir}"]
    for attempt in range(2):  # two kills at random moments, the second in a resumed run
        with (tmp_path / f"kill{attempt}.log").open("w") as sink:
            proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
            wait_for_history(run_dir, rng.randint(1, 8) + 8 * attempt, proc)
            time.sleep(rng.uniform(0, 0.3))  # anywhere inside an epoch, or inside a save
            proc.send_signal(sig)
            proc.wait(timeout=60)
        assert proc.returncode != 0
        assert_consistent_pair(run_dir)
        assert read_metrics(run_dir)["status"] == ("running" if sig == signal.SIGKILL else "interrupted")
    if into == "same":  # the same command again
        final = run_cli(args[3:], cwd=tmp_path, env=ONE_THREAD)
        assert "resumed from its last checkpoint" in final.stdout + final.stderr
        finished = run_dir
    else:
        finished = tmp_path / "new"
        final = run_cli([*KILL_ARGS, f"resume={run_dir}", f"hydra.run.dir={finished}"], cwd=tmp_path,
                        env=ONE_THREAD)
    assert final.returncode == 0, final.stderr
    assert read_metrics(finished)["metrics"] == uninterrupted
    assert read_metrics(finished)["epochs"] == 24
    assert_consistent_pair(finished)


# ----------------------------------------------------------------------------- a user's own model
@pytest.mark.slow
def test_a_users_own_model_from_their_own_folders(tmp_path):
    """docs/adding_a_model.md's example, as a user types it: a module and a YAML file in their own folders."""
    (tmp_path / "my_models.py").write_text(
        "from unroll_cli.models.lista import LISTACP\n\n\n"
        "class HalfThresholdLISTACP(LISTACP):\n"
        "    \"\"\"LISTA-CP whose thresholds start at half of ISTA's.\"\"\"\n\n"
        "    def __init__(self, A, layers, lam, tied=True):\n"
        "        super().__init__(A, layers, lam / 2, tied)\n")
    (tmp_path / "my_conf/model").mkdir(parents=True)
    (tmp_path / "my_conf/model/half_cp.yaml").write_text(
        "# @package _global_\n"
        "trusted_packages: [my_models]\n"
        "model:\n"
        "  _target_: my_models.HalfThresholdLISTACP\n"
        "  name: half_cp\n"
        "  task: sparse_coding\n"
        "  layers: 4\n"
        "  lam: 0.4\n")
    run_dir = tmp_path / "run"
    result = run_cli([*FAST, "optim.lr=1e-9", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
                      "model=half_cp", f"hydra.run.dir={run_dir}"], cwd=tmp_path, process=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_metrics(run_dir)["model"] == "half_cp"
    # barely trained (lr 1e-9): the thresholds are the class's, lam / 2 / L, L = 1.001 ||A||^2 of the saved A
    A = np.load(run_dir / "A.npy").astype(np.float64)
    theta = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]["theta.0"].item()
    assert theta == pytest.approx(0.4 / 2 / (1.001 * np.linalg.norm(A, 2) ** 2), rel=1e-5)
