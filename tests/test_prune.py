"""+callbacks=prune (iterative magnitude pruning with rewinding): the counts, the weights pruned, the
masks through training, rewinding, resume after an interrupt and SIGKILL, rounds.csv and its report."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, read_metrics, run_cli, wait_for_history
from test_classification_run import write_learnable_mnist
from unroll_cli.run import run
from unroll_cli.train.callbacks import Callback
from unroll_cli.train.prune import magnitude_masks
from unroll_cli.train.trainer import Trainer

FAST = [*TINY, "tensorboard=false"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def kept(total: int, round_: int) -> int:
    """ceil(0.8^r N) in integers: ceil(4^r N / 5^r)."""
    return -(-(4 ** round_) * total // 5 ** round_)


def largest(magnitudes: np.ndarray, alive: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest of ``magnitudes`` among the ``alive`` entries, as a boolean array (a sort)."""
    order = sorted(np.flatnonzero(alive), key=lambda i: -magnitudes[i])
    keep = np.zeros(magnitudes.size, dtype=bool)
    keep[order[:count]] = True
    return keep


# ----------------------------------------------------------------------------- the masks alone
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_each_round_keeps_the_exact_count_of_the_largest_remaining_magnitudes(scope):
    generator = torch.Generator().manual_seed(0)
    shapes = {"a": (5, 7), "b": (11, 3), "c": (2, 4, 4)}
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
    for round_ in range(1, 6):
        weights = {n: torch.randn(s, generator=generator) * masks[n] for n, s in shapes.items()}  # "trained"
        new = magnitude_masks(weights, masks, 0.2, round_, scope)
        flat = {n: w.abs().flatten().numpy() for n, w in weights.items()}
        alive = {n: m.flatten().numpy() for n, m in masks.items()}
        if scope == "global":
            expected = largest(np.concatenate(list(flat.values())), np.concatenate(list(alive.values())),
                               kept(sum(v.size for v in flat.values()), round_))
            assert np.array_equal(np.concatenate([new[n].flatten().numpy() for n in shapes]), expected)
        else:
            for n in shapes:
                assert np.array_equal(new[n].flatten().numpy(), largest(flat[n], alive[n], kept(flat[n].size, round_)))
        assert all(not (new[n] & ~masks[n]).any() for n in shapes)  # a pruned weight never returns
        masks = new


# ----------------------------------------------------------------------------- through a run
class Spy(Callback):
    """The run's weights as the test sees them: after every step (with the round it was in), the
    initial ones and those after the rewind step."""

    def __init__(self, names, rewind_step):
        self.names, self.rewind_step, self.steps, self.at_rewind = names, rewind_step, [], None

    def on_fit_start(self, trainer):
        if self.rewind_step == 0:
            self.at_rewind = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def after_step(self, trainer, step):
        state = trainer.model.state_dict()
        if step == self.rewind_step:
            self.at_rewind = {k: v.clone() for k, v in state.items()}
        self.steps.append((trainer.callbacks.named["prune"].round, {n: state[n].clone() for n in self.names}))


def spied_run(tmp_path, overrides, names, rewind_step):
    """A run with the spy; also the model (and the masks) before and after each round's schedule."""
    starts, ends, masks = [], [], []
    original = Trainer.run_schedule

    def recorded(self):
        starts.append({k: v.clone() for k, v in self.model.state_dict().items()})
        masks.append({k: v.clone() for k, v in self.callbacks.named["prune"].masks.items()})
        original(self)
        ends.append({k: v.clone() for k, v in self.model.state_dict().items()})

    spy = Spy(names, rewind_step)
    cfg = _cfg([*overrides, f"callbacks.prune.rewind_step={rewind_step}"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "run_schedule", recorded)
        run(cfg, tmp_path, callbacks={"spy": spy})
    return spy, starts, ends, masks


def _cfg(overrides):
    from conftest import compose_cfg

    return compose_cfg([*FAST, "+callbacks=prune", "callbacks.prune.rounds=2", *overrides])


# butterfly twiddles start with exact zeros (and some keep them): their count of non-zeros is not checked
@pytest.mark.parametrize("model, scope, rewind_step, names, dense", [
    (["model=lista"], "global", 3, ["B", "W"], True),
    (["model=lista", "model.operator=butterfly"], "layer", 0, ["B.twiddle", "W.twiddle"], False),
])
def test_a_pruned_run_keeps_its_masks_rewinds_exactly_and_prunes_the_smallest(tmp_path, one_thread, model, scope,
                                                                               rewind_step, names, dense):
    overrides = [*model, f"callbacks.prune.scope={scope}"]
    spy, starts, ends, masks = spied_run(tmp_path, overrides, names, rewind_step)
    assert len(starts) == len(ends) == 3  # the dense round and two pruning rounds

    def count(state, round_):
        sizes = [state[n].numel() for n in names]
        return [kept(sum(sizes), round_)] if scope == "global" else [kept(s, round_) for s in sizes]

    def nonzero(state):
        values = [int((state[n] != 0).sum()) for n in names]
        return [sum(values)] if scope == "global" else values

    def alive_count(mask):
        return nonzero({n: mask[n].int() for n in names})

    alive = {n: torch.ones_like(starts[0][n], dtype=torch.bool) for n in names}
    for round_ in (1, 2):
        start, trained = starts[round_], ends[round_ - 1]
        mask = masks[round_]
        assert alive_count(mask) == count(start, round_)
        # the kept weights are the largest magnitudes of the previous round's trained weights (a sort here)
        groups = [names] if scope == "global" else [[n] for n in names]
        for group in groups:
            magnitudes = np.concatenate([trained[n].abs().flatten().numpy() for n in group])
            previous = np.concatenate([alive[n].flatten().numpy() for n in group])
            expected = largest(magnitudes, previous, kept(magnitudes.size, round_))
            assert np.array_equal(np.concatenate([mask[n].flatten().numpy() for n in group]), expected)
        # rewound: every value the saved one, bit for bit, where the mask keeps it (thresholds included)
        for key, value in start.items():
            saved = spy.at_rewind[key]
            kept_part = mask[key] if key in mask else torch.ones_like(value, dtype=torch.bool)
            assert torch.equal(value[kept_part], saved[kept_part]), key
            assert not value[~kept_part].any(), key
        alive = mask
        # through the round's training every pruned weight stays zero
        in_round = [weights for r, weights in spy.steps if r == round_]
        assert len(in_round) == 2 * 5
        for weights in in_round:
            assert all(not weights[n][~mask[n]].any() for n in names)
        if dense:  # exactly ceil(0.8^r N) weights are non-zero
            assert nonzero(in_round[-1]) == count(start, round_)
    table = pd.read_csv(tmp_path / "rounds.csv")
    assert list(table["round"]) == [0, 1, 2]
    total = sum(starts[0][n].numel() for n in names)
    assert list(table["weights"]) == [total, *[sum(count(starts[0], r)) for r in (1, 2)]]
    assert table["test/nmse_db"].iloc[-1] == pytest.approx(read_metrics(tmp_path)["metrics"]["test/nmse_db"])


# ----------------------------------------------------------------------------- interrupts
RESUME = ["model=lista", "callbacks.prune.rewind_step=3", "trainer.max_epochs=3"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder, threads = tmp_path_factory.mktemp("straight"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(_cfg(RESUME), folder)
    finally:
        torch.set_num_threads(threads)
    return folder


class StopAt(Callback):
    """Exit (a cluster's requeue) at the ``number``-th validation of pruning round ``round_``."""

    def __init__(self, round_, number):
        self.at = (round_, number)

    def on_validation(self, trainer, number, metrics):
        if (trainer.callbacks.named["prune"].round, number) == self.at:
            raise SystemExit(-1)


@pytest.mark.parametrize("round_, number", [(1, 1), (2, 3)])
def test_an_interrupted_pruning_run_resumes_to_the_same_result(tmp_path, straight, one_thread, round_, number):
    with pytest.raises(SystemExit):
        run(_cfg(RESUME), tmp_path / "first", callbacks={"stop": StopAt(round_, number)})
    assert read_metrics(tmp_path / "first")["status"] == "interrupted"
    run(_cfg([*RESUME, f"resume={tmp_path / 'first'}"]), tmp_path / "resumed")
    assert read_metrics(tmp_path / "resumed")["metrics"] == read_metrics(straight)["metrics"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "resumed/rounds.csv"), pd.read_csv(straight / "rounds.csv"))
    a = torch.load(straight / "checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    masks_a, masks_b = a["callbacks"]["prune"]["masks"], b["callbacks"]["prune"]["masks"]
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in ("B", "W"))


KILL_ARGS = [*FAST, "model=lista", "+callbacks=prune", "callbacks.prune.rounds=3", "callbacks.prune.rewind_step=7",
             "trainer.max_epochs=3", "trainer.steps_per_epoch=25"]


@pytest.mark.slow
def test_killed_at_random_moments_a_pruning_run_resumes_exactly(tmp_path):
    done = run_cli([*KILL_ARGS, f"hydra.run.dir={tmp_path / 'straight'}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    rng = random.Random(5)
    run_dir = tmp_path / "run"
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-m", "unroll_cli.cli", *KILL_ARGS, f"hydra.run.dir={run_dir}"]
    for rows in (rng.randint(1, 4), rng.randint(6, 9)):  # in round 0 or 1, then in round 2 or 3 of a resumed run
        with (tmp_path / f"kill{rows}.log").open("w") as sink:
            proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
            wait_for_history(run_dir, rows, proc)
            time.sleep(rng.uniform(0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        assert proc.returncode != 0
    final = run_cli(args[3:], cwd=tmp_path, env=ONE_THREAD)
    assert final.returncode == 0, final.stderr
    assert "resumed from its last checkpoint" in final.stdout + final.stderr
    assert read_metrics(run_dir)["metrics"] == read_metrics(tmp_path / "straight")["metrics"]
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "rounds.csv"), pd.read_csv(tmp_path / "straight/rounds.csv"))


def test_a_kill_between_the_swap_link_and_its_rename_does_not_stop_the_resume(tmp_path):
    """SIGKILL inside a checkpoint save can leave the store's next link, ``.checkpoints.swap``: the same
    command resumes (the link is the store's own, replaced by the next save)."""
    args = [*FAST, "model=lista", "+callbacks=prune", "callbacks.prune.rounds=1", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    generation = os.readlink(tmp_path / "run/checkpoints")
    os.symlink(generation, tmp_path / "run/.checkpoints.swap")
    (tmp_path / "run/metrics.json").write_text((tmp_path / "run/metrics.json").read_text().replace(
        '"completed"', '"running"'))  # as a killed run leaves it
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed from its last checkpoint" in again.stdout + again.stderr
    assert not (tmp_path / "run/.checkpoints.swap").is_symlink()


# ----------------------------------------------------------------------------- rounds.csv over seeds
@pytest.mark.slow
def test_the_report_gives_each_rounds_mean_and_std_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *FAST, "model=lista", "+callbacks=prune", "callbacks.prune.rounds=2",
                      "+diagnostics=coherence", "seed=1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    tables = [pd.read_csv(f) for f in sorted(sweep.glob("*/rounds.csv"))]
    assert len(tables) == 2
    assert "coherence/dictionary" in tables[0]  # the run's diagnostics, measured each round
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    report = subprocess.run([sys.executable, "-m", "unroll_cli.report", str(sweep), "--table", "rounds.csv"],
                            capture_output=True, text=True, env=env)
    assert report.returncode == 0, report.stderr
    out = pd.read_csv(sweep / "report_rounds.csv").set_index("round")
    values = np.stack([t["test/nmse_db"].to_numpy() for t in tables])
    assert list(out.index) == [0, 1, 2]
    assert np.allclose(out["test/nmse_db mean"], values.mean(axis=0))
    assert np.allclose(out["test/nmse_db std"], values.std(axis=0, ddof=1))
    assert list(out["density"]) == pytest.approx([1.0, 0.8, 0.64])


# ----------------------------------------------------------------------------- other models, refusals
def test_an_ml_ista_classifier_prunes_its_filters_and_keeps_its_classifier_dense(tmp_path):
    write_learnable_mnist(tmp_path / "data/MNIST/raw", np.random.default_rng(0), n_train=96, n_test=64)
    run_dir = tmp_path / "run"
    result = run_cli(["model=ml_ista", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
                      "data.batch_size=32", "model.unfoldings=1", "optim=sgd", "optim.lr=0.05", "trainer.max_epochs=1",
                      "trainer.progress=false", "tensorboard=false", "+callbacks=prune", "callbacks.prune.rounds=1",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    model = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    filters = [k for k in model if k.startswith("W.")]
    total = sum(model[k].numel() for k in filters)
    assert sum(int((model[k] != 0).sum()) for k in filters) == kept(total, 1)
    assert (model["classifier.weight"] != 0).all()  # the output layer is not pruned
    table = pd.read_csv(run_dir / "rounds.csv")
    assert list(table["round"]) == [0, 1] and "test/acc" in table
    assert table["test/acc"].iloc[-1] == read_metrics(run_dir)["metrics"]["test/acc"]


@pytest.mark.parametrize("overrides, message", [
    (["model=alista"], "callbacks.prune: model=alista has no prunable weights"),
    (["model=lista", "callbacks.prune.rewind_step=11"], "rewind_step=11 is past the end of training"),
    (["model=lista", "callbacks.prune.fraction=1.5"], "callbacks.prune"),
    (["model=lista", "callbacks.prune.scope=row"], "scope must be one of global, layer"),
])
def test_a_pruning_run_it_cannot_serve_is_refused_before_any_work(tmp_path, overrides, message):
    result = run_cli([*FAST, "+callbacks=prune", *overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "run/checkpoints").exists()
