"""Sweeps beyond the basic one: the Optuna sweeper (search space, best trial, resume, pruning) and
the joblib, submitit and SLURM launchers."""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import TINY, read_metrics, run_cli
from unroll_cli.report.aggregate import main as report_main
from unroll_cli.sweep.optuna_study import distribution, requeue_interrupted, search_space

FAST = [*TINY, "tensorboard=false"]


def test_hydra_sweep_grammar_becomes_optuna_distributions():
    parse = lambda line: distribution(OverridesParser.create().parse_override(line))  # noqa: E731
    assert parse("a=interval(0.1, 1)") == FloatDistribution(0.1, 1.0)
    assert parse("a=tag(log, interval(1e-4, 1e-2))") == FloatDistribution(1e-4, 1e-2, log=True)
    assert parse("a=int(interval(2, 9))") == IntDistribution(2, 9)
    assert parse("a=range(1, 8, 2)") == IntDistribution(1, 7, step=2)  # Hydra's range excludes 8
    assert parse("a=choice(lista, alista)") == CategoricalDistribution(["lista", "alista"])
    assert parse("a=lista,alista") == CategoricalDistribution(["lista", "alista"])

    space, fixed = search_space({"optim.lr": "interval(1e-4, 1e-2)", "model.lam": "interval(0.1, 1)"},
                                ["model.lam=0.5", "seed=3", "model=lista,alista"])
    assert space == {"optim.lr": FloatDistribution(1e-4, 1e-2),  # the command line wins over params
                     "model": CategoricalDistribution(["lista", "alista"])}
    assert fixed == ["model.lam=0.5", "seed=3"]


def test_trials_left_running_by_an_interruption_are_queued_again():
    study = optuna.create_study()
    done = study.ask({"x": FloatDistribution(0, 1)})
    study.tell(done, 0.5)
    stale = study.ask({"x": FloatDistribution(0, 1)})  # the sweep died while this trial ran
    requeue_interrupted(study)
    assert study.trials[stale.number].state == TrialState.FAIL
    again = study.ask({"x": FloatDistribution(0, 1)})
    assert again.params == stale.params and again.number == 2


def sweep_records(sweep) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}


@pytest.mark.slow
def test_optuna_sweep_finds_the_best_run_resumes_and_prunes(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=lista_cpss_optuna", *FAST, f"hydra.sweep.dir={sweep}"]
    first = run_cli([*args, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    records = sweep_records(sweep)
    assert sorted(records) == ["0", "1", "2"] and all(r["status"] == "completed" for r in records.values())
    # every job returned its validation NMSE (optimized_metric), and the study's best is their minimum
    values = {name: r["metrics"]["val/nmse_db"] for name, r in records.items()}
    assert all(r["optimized"] == {"name": "val/nmse_db", "value": values[name]} for name, r in records.items())
    best = yaml.safe_load((sweep / "optuna_results.yaml").read_text())
    best_run = min(values, key=values.get)
    assert best["best_value"] == min(values.values()) and best["best_trial"] == int(best_run)
    overrides = yaml.safe_load((sweep / best_run / ".hydra/overrides.yaml").read_text())
    assert {f"{k}={v}" for k, v in best["best_params"].items()} <= set(overrides)
    assert (sweep / "optuna.db").is_file()

    # The same command with two more trials resumes the study: only trials 3 and 4 run. A pruner that
    # stops anything above -100 dB prunes both after their first epoch; pruning is not a failure.
    stamps = {name: (sweep / name / "metrics.json").stat().st_mtime_ns for name in records}
    pruning = ["hydra.sweeper.pruner=null",
               "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,upper:-100}"]
    again = run_cli([*args, "hydra.sweeper.n_trials=5", *pruning], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    records = sweep_records(sweep)
    assert sorted(records) == ["0", "1", "2", "3", "4"]
    assert all((sweep / n / "metrics.json").stat().st_mtime_ns == t for n, t in stamps.items())
    for name in "34":
        assert records[name]["status"] == "pruned" and "ThresholdPruner at step 1" in records[name]["error"]
    study = optuna.load_study(study_name="lista_cpss_lr_lam", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED] * 2
    assert list(study.trials[3].intermediate_values) == [1]  # stopped after epoch 1 of 2
    assert study.best_value == min(values.values())
    assert report_main([str(sweep)]) == 0  # pruned trials are listed, but are not failures
    assert "2 run(s) not completed" in capsys.readouterr().out


def test_a_search_config_without_multirun_is_one_plain_run(tmp_path):
    result = run_cli(["hparams_search=lista_cpss_optuna", *FAST, f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"


def test_a_failing_trial_fails_the_sweep_but_not_the_study(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hparams_search=lista_cpss_optuna", *FAST, "hydra.sweeper.n_trials=2",
                      "optim.lr=choice(1e30)", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode != 0 and "2 trial(s) failed" in result.stderr
    assert [r["status"] for r in sweep_records(sweep).values()] == ["failed", "failed"]
    study = optuna.load_study(study_name="lista_cpss_lr_lam", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2


@pytest.mark.parametrize("launcher", ["joblib", pytest.param("submitit_local", marks=pytest.mark.slow)])
def test_launchers_run_every_job_in_its_own_directory(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *FAST, "model=ista,lista", f"hydra/launcher={launcher}",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = sweep_records(sweep)
    assert sorted(records) == ["0", "1"]
    assert sorted(r["model"] for r in records.values()) == ["ista", "lista"]
    assert all(r["status"] == "completed" and math.isfinite(r["metrics"]["test/nmse_db"])
               for r in records.values())


def test_slurm_gpu_launcher_config_composes(tmp_path):
    result = run_cli(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100", "--cfg", "hydra",
                      "--package", "hydra.launcher"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "a100" and launcher["gpus_per_node"] == 1
    assert launcher["max_num_timeout"] >= 1  # requeued at the time limit, resumed from its checkpoint


@pytest.mark.slow
def test_an_interrupted_job_resumes_when_run_again(tmp_path):
    from test_cli import interrupt_after_history

    run_dir = tmp_path / "run"
    args = [*FAST, "trainer.max_epochs=100000", f"hydra.run.dir={run_dir}"]
    interrupt_after_history(args, run_dir, rows=1)
    first = read_metrics(run_dir)
    assert first["status"] == "interrupted"
    seen = len((run_dir / "history.csv").read_text().splitlines()) - 1
    output = interrupt_after_history(args, run_dir, rows=seen + 2)  # the same command again
    assert "resumed from its last checkpoint" in output
    history = (run_dir / "history.csv").read_text().splitlines()[1:]
    epochs = [int(line.split(",")[0]) for line in history]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= seen + 2  # continued, not restarted


@pytest.mark.slow
def test_optuna_search_that_maximizes_validation_accuracy_reports_every_epoch(tmp_path):
    from test_classification_run import write_learnable_mnist

    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), n_train=200, n_test=50)
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hparams_search=ml_ista_optuna", "data=mnist", f"data.root={tmp_path / 'data'}",
                      "data.download=false", "data.val_size=50", "data.batch_size=32", "trainer.max_epochs=2",
                      "trainer.progress=false", "tensorboard=false", "model.unfoldings=choice(0,1)",
                      "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = sweep_records(sweep)
    values = [r["metrics"]["val/acc_best"] for r in records.values()]
    assert len(values) == 2 and all(r["status"] == "completed" for r in records.values())
    assert all({"model.unfoldings=0", "model.unfoldings=1"} & set(r["overrides"]) for r in records.values())
    study = optuna.load_study(study_name="ml_ista_sgd", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.best_value == max(values)
    for trial in study.trials:
        # the pruner saw the per-epoch validation accuracy (higher is better, as the study)
        assert sorted(trial.intermediate_values) == [1, 2]
        assert max(trial.intermediate_values.values()) == pytest.approx(trial.value)
