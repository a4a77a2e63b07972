"""README promises that had no test, each against an independent computation: bit-identical
``deterministic=true`` runs, the refusal of ``-cp``/``--config-path``, the ``data.baselines`` metrics
against ISTA/FISTA written out in numpy, ``data.acc_mean_epochs`` against the per-epoch accuracies in
history.csv, ``sched=cosine`` against its closed form, and ``hydra.sweeper.n_jobs`` trials per launch."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from conftest import compose_cfg, read_metrics, run_cli
from test_classification_run import write_learnable_mnist
from unroll_cli.run import build_task, run

QUIET = ["tensorboard=false"]


@pytest.fixture
def restore_determinism():
    """``deterministic=true`` switches torch's deterministic algorithms on for the process: switch back."""
    enabled, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = benchmark
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]


# ----------------------------------------------------------------------------- deterministic=true
def test_deterministic_runs_with_one_seed_are_bit_identical_and_another_seed_differs(
        tiny_cfg, tmp_path, one_thread, restore_determinism):
    torch.use_deterministic_algorithms(False)
    for name, seed in (("a", 0), ("b", 0), ("other", 1)):
        run(tiny_cfg("deterministic=true", f"seed={seed}", *QUIET), tmp_path / name)
        assert torch.are_deterministic_algorithms_enabled()  # what deterministic=true sets for the run
        torch.use_deterministic_algorithms(False)
    a, b, other = (tmp_path / name for name in ("a", "b", "other"))
    assert read_metrics(a)["metrics"] == read_metrics(b)["metrics"]
    history = lambda d: pd.read_csv(d / "history.csv").drop(columns="seconds")  # noqa: E731
    pd.testing.assert_frame_equal(history(a), history(b), check_exact=True)
    wa, wb, wo = weights(a), weights(b), weights(other)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the seed reaches the run: another one trains on other data, to other weights and metrics
    assert read_metrics(other)["metrics"]["test/nmse_db"] != read_metrics(a)["metrics"]["test/nmse_db"]
    assert any(not torch.equal(wa[k], wo[k]) for k in wa)


# ----------------------------------------------------------------------------- -cp / --config-path
@pytest.mark.parametrize("flag", ["-cp", "--config-path"])
def test_config_path_is_refused_naming_the_searchpath(tmp_path, flag):
    """Like ``-cd`` (tests/test_adversarial.py): Hydra would compose another primary config than the
    one ``unroll-train`` checked, so the flag is refused before any work, pointing to hydra.searchpath."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yaml").write_text("seed: 0\n")
    run_dir = tmp_path / "run"
    result = run_cli([flag, str(tmp_path / "conf"), "trainer.progress=false", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "hydra.searchpath" in output and "--config-path" in output and "Traceback" not in output
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- data.baselines
def soft(v: np.ndarray, b: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - b, 0)


def classical(A: np.ndarray, y: np.ndarray, lam: float, layers: int, fista: bool) -> list[np.ndarray]:
    """ISTA (Daubechies et al. 2004) or FISTA (Beck & Teboulle 2009) from x = 0, one sample (row of y)
    at a time in float64: step 1/L, threshold lam/L, L = 1.001 ||A||_2^2 (the README's convention)."""
    L = 1.001 * np.linalg.norm(A, 2) ** 2
    out = np.zeros((layers, *y.shape[:1], A.shape[1]))
    for i, yi in enumerate(y):
        x_prev = v = np.zeros(A.shape[1])
        t = 1.0
        for k in range(layers):
            x = soft(v + A.T @ (yi - A @ v) / L, lam / L)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            v = x + (t - 1) / t_next * (x - x_prev) if fista else x
            x_prev, t = x, t_next
            out[k, i] = x
    return list(out)


def nmse_db(x_hat: np.ndarray, x: np.ndarray) -> float:
    """Pooled over the test set (the default data.nmse)."""
    return 10 * math.log10(((x_hat - x) ** 2).sum() / (x ** 2).sum())


def support_f1(x_hat: np.ndarray, x: np.ndarray) -> float:
    hits = np.sum((x_hat != 0) & (x != 0))
    precision, recall = hits / np.sum(x_hat != 0), hits / np.sum(x != 0)
    return 2 * precision * recall / (precision + recall)


def test_baseline_metrics_are_ista_and_fista_written_out_on_the_runs_matrix_and_test_set(tiny_cfg, tmp_path,
                                                                                         one_thread):
    cfg = tiny_cfg("model.layers=6", "model.lam=0.2", *QUIET)
    run(cfg, tmp_path)
    metrics = read_metrics(tmp_path)["metrics"]
    layers = pd.read_csv(tmp_path / "layers.csv")
    A = np.load(tmp_path / "A.npy").astype(np.float64)
    y, x = (t.double().numpy() for t in build_task(cfg, torch.device("cpu")).test)
    for name in ("ista", "fista"):
        estimates = classical(A, y, 0.2, 6, fista=name == "fista")
        per_layer = [0.0] + [nmse_db(e, x) for e in estimates]
        np.testing.assert_allclose(layers[f"baseline/{name}/test/nmse_db"], per_layer, rtol=0, atol=1e-4)
        assert metrics[f"baseline/{name}/test/nmse_db"] == pytest.approx(per_layer[-1], abs=1e-4)
        assert metrics[f"baseline/{name}/test/support_f1"] == pytest.approx(support_f1(estimates[-1], x), abs=1e-9)
    # FISTA is not ISTA here: the check tells the two apart
    assert abs(metrics["baseline/fista/test/nmse_db"] - metrics["baseline/ista/test/nmse_db"]) > 0.1


def test_baselines_list_selects_exactly_those_metrics(tiny_cfg, tmp_path, one_thread):
    """``data.baselines`` only adds metrics: the model's own are the same with none, one or both."""
    common = ["model=ista", "trainer.max_epochs=0", *QUIET]
    records = {}
    for baselines in ("[]", "[fista]", "[ista,fista]"):
        run(tiny_cfg(*common, f"data.baselines={baselines}"), tmp_path / baselines)
        records[baselines] = read_metrics(tmp_path / baselines)["metrics"]
    none, fista, both = records.values()
    assert not any(key.startswith("baseline/") for key in none)
    keys = lambda prefix: {f"baseline/{prefix}/test/{m}" for m in ("nmse_db", "support_precision",  # noqa: E731
                                                                   "support_recall", "support_f1")}
    assert set(fista) - set(none) == keys("fista") and set(none) <= set(fista)
    assert set(both) - set(none) == keys("ista") | keys("fista")
    assert {k: both[k] for k in none} == none == {k: fista[k] for k in none}
    # model=ista at the same depth and lam is the ISTA baseline itself
    assert both["baseline/ista/test/nmse_db"] == pytest.approx(both["test/nmse_db"], abs=1e-9)


# ----------------------------------------------------------------------------- data.acc_mean_epochs
@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """Tiny MNIST files in the real format whose classes can be learnt: the accuracy changes by epoch."""
    root = tmp_path_factory.mktemp("data")
    write_learnable_mnist(root / "MNIST" / "raw", np.random.default_rng(0), n_train=100, n_test=50)
    return root


@pytest.mark.parametrize("window", ["[2,5]", "null"])
def test_mean_accuracy_is_the_mean_of_the_history_over_exactly_those_epochs(mnist_root, tmp_path, one_thread,
                                                                           window):
    epochs = 12
    cfg = compose_cfg(["data=mnist", f"data.root={mnist_root}", "data.download=false", "model=cnn",
                       "data.batch_size=25", "optim=adam", "optim.lr=1e-3", f"trainer.max_epochs={epochs}",
                       "trainer.progress=false", f"data.acc_mean_epochs={window}", *QUIET])
    run(cfg, tmp_path)
    per_epoch = pd.read_csv(tmp_path / "history.csv").set_index("epoch")["test/acc"]
    assert list(per_epoch.index) == list(range(1, epochs + 1))
    first, last = (2, 5) if window == "[2,5]" else (epochs - 9, epochs)  # null: the last 10
    expected = float(np.mean([per_epoch[e] for e in range(first, last + 1)]))
    reported = read_metrics(tmp_path)["metrics"]["test/acc_last_k_mean"]
    assert reported == pytest.approx(expected, rel=1e-12)
    # the accuracies vary: a window shifted by one epoch, or all epochs, would give another mean
    for other in ((first - 1, last - 1), (first + 1, last + 1), (1, epochs)):
        window_mean = np.mean([per_epoch[e] for e in range(max(other[0], 1), min(other[1], epochs) + 1)])
        assert window_mean != pytest.approx(expected, rel=1e-12), other


# ----------------------------------------------------------------------------- sched=cosine
def test_cosine_learning_rates_follow_the_closed_form(tiny_cfg, tmp_path, one_thread):
    epochs, lr0, eta_min = 5, 2e-3, 1e-4
    run(tiny_cfg("sched=cosine", f"trainer.max_epochs={epochs}", f"optim.lr={lr0}", f"sched.eta_min={eta_min}",
                 *QUIET), tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == list(range(1, epochs + 1))
    # epoch e trains at the rate after e - 1 scheduler steps; T_max is the run's max_epochs
    expected = [eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2
                for e in history["epoch"]]
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- hydra.sweeper.n_jobs
class RecordingLauncher:
    """A launcher that records each batch it is given and, while it "runs" it, which trials the study
    holds as running; each job returns (lr - 0.003)^2 of its own overrides."""

    def __init__(self, storage: str, study_name: str):
        self.storage, self.study_name, self.batches = storage, study_name, []

    def launch(self, batch, initial_job_idx):
        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        self.batches.append((initial_job_idx, [list(o) for o in batch], running))
        results = []
        for overrides in batch:
            lr = float(next(o for o in overrides if o.startswith("optim.lr=")).split("=", 1)[1])
            results.append(JobReturn(overrides=list(overrides), _return_value=(lr - 0.003) ** 2,
                                     status=JobStatus.COMPLETED))
        return results


@pytest.mark.parametrize("n_trials, n_jobs, sizes", [(5, 2, [2, 2, 1]), (4, 4, [4]), (3, 1, [1, 1, 1])])
def test_the_optuna_sweeper_launches_n_jobs_trials_at_a_time(tmp_path, n_trials, n_jobs, sizes):
    from hydra_plugins.unroll_optuna_sweeper.optuna_sweeper import OptunaSweeper

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweeper = OptunaSweeper(direction="minimize", n_trials=n_trials, n_jobs=n_jobs, study_name="s",
                            storage=storage, sampler=optuna.samplers.RandomSampler(seed=0), pruner=None,
                            params={"optim.lr": "interval(1e-4, 1e-2)"})
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = RecordingLauncher(storage, "s")
    sweeper.validate_batch_is_legal = lambda batch: None  # no Hydra config loader here
    study = sweeper.sweep(["seed=3"])
    batches = sweeper.launcher.batches
    assert [len(jobs) for _, jobs, _ in batches] == sizes
    start = 0
    for (first, jobs, running), size in zip(batches, sizes):
        # one batch = the next `size` trials, all asked before any is told; job number = trial number
        assert first == start and running == list(range(start, start + size))
        assert all("seed=3" in overrides for overrides in jobs)
        start += size
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n_trials
    for trial in study.trials:  # each trial got the value of its own job
        assert trial.value == pytest.approx((trial.params["optim.lr"] - 0.003) ** 2, rel=1e-12)
