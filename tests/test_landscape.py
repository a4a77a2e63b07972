"""``+experiment=le2023_landscape`` (``data=fixed_support``): gradient fits of the two-layer fixed-support
problem against the optimum, checked with numpy on the run's own files (its target, supports and factors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import read_metrics, run_cli
from test_fixed_support import butterfly_supports
from unroll_cli.models.fixed_support import fixed_support_factorize
from unroll_cli.tasks.fixed_support import butterfly_split_supports, class_count, random_disjoint_supports


def numpy_optimum(target: np.ndarray, left: np.ndarray, right: np.ndarray) -> float:
    """||A - XY||_F / ||A||_F at the optimum, by Eckart-Young per class of identical rank-one supports:
    each class's block keeps its leading singular values (as many as the class has indices), the rest of
    ``A`` (outside every block) is not approximated."""
    classes: dict[tuple, int] = {}
    for k in range(left.shape[1]):
        if left[:, k].any() and right[k].any():
            key = (tuple(np.flatnonzero(left[:, k])), tuple(np.flatnonzero(right[k])))
            classes[key] = classes.get(key, 0) + 1
    residual = float(np.sum(target ** 2))
    for (rows, cols), members in classes.items():
        singular = np.linalg.svd(target[np.ix_(rows, cols)], compute_uv=False)
        residual -= float(np.sum(singular[:members] ** 2))
    return np.sqrt(residual) / np.linalg.norm(target)


def test_the_tasks_supports_are_the_butterfly_split_and_disjoint_rectangles():
    for n in (8, 16, 64):
        left, right = butterfly_split_supports(n)
        expected = butterfly_supports(n, (n.bit_length() - 1) // 2)
        assert torch.equal(left, expected[0]) and torch.equal(right, expected[1])
    left, right = random_disjoint_supports(24, 5, np.random.default_rng(0))
    assert class_count(left, right) == 5 and left.shape[1] >= 5
    fixed_support_factorize(torch.ones(24, 24), left, right)  # tractable: no ValueError
    with pytest.raises(ValueError, match="data.classes=40"):
        random_disjoint_supports(8, 40, np.random.default_rng(0))


def run_files(run_dir):
    """The run's target, supports and factors, and its metrics."""
    arrays = {name: np.load(run_dir / f"{name}.npy") for name in
              ("target", "left_support", "right_support", "dictionary_X", "dictionary_Y")}
    return arrays, read_metrics(run_dir)["metrics"]


def test_lbfgs_reaches_the_optimum_and_a_start_stopped_early_is_stuck(tmp_path):
    # L-BFGS with a line search from the run's start, on random rectangles: no spurious valley (Le et al.)
    reached = tmp_path / "lbfgs"
    result = run_cli(["+experiment=le2023_landscape", "data.support=random", "data.N=12", "data.classes=3",
                      "trainer.max_epochs=0", "sched=none", "+callbacks=polish", "callbacks.polish.steps=20",
                      "callbacks.polish.line_search=strong_wolfe", "tensorboard=false",
                      f"hydra.run.dir={reached}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # one Adam step of a butterfly problem: far from the optimum
    early = tmp_path / "adam"
    result = run_cli(["+experiment=le2023_landscape", "data.N=8", "trainer.max_epochs=1",
                      "trainer.steps_per_epoch=1", "tensorboard=false", f"hydra.run.dir={early}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for run_dir, stuck in ((reached, 0.0), (early, 1.0)):
        arrays, metrics = run_files(run_dir)
        left, right = arrays["left_support"], arrays["right_support"]
        x, y = arrays["dictionary_X"], arrays["dictionary_Y"]
        assert not x[~left].any() and not y[~right].any()  # the factors stay on their supports
        target = arrays["target"]
        error = np.linalg.norm(target - x @ y) / np.linalg.norm(target)
        optimum = numpy_optimum(target, left, right)
        assert metrics["test/rel_error"] == pytest.approx(error, rel=1e-12)
        assert metrics["factorize/rel_error"] == pytest.approx(optimum, rel=1e-12)
        assert metrics["test/excess"] == pytest.approx(error - optimum, abs=1e-12)
        assert metrics["test/stuck"] == stuck
    assert read_metrics(reached)["metrics"]["test/excess"] < 1e-9
    assert read_metrics(early)["metrics"]["test/excess"] > 1e-2


@pytest.mark.parametrize("overrides, message", [
    (["data.N=12"], "data.N=12: data.support=butterfly needs a power of two"),
    (["data.support=random", "data.N=8", "data.classes=40"], "data.classes=40"),
    (["data.support=random", "data.N=4"], "data.N=4: data.support=random needs N >= 6"),
    (["data.classes=4"], "data.classes=4: data.support=butterfly has its own classes"),
    (["trainer.max_epochs=0", "sched=none", "+callbacks=polish", "callbacks.polish.line_search=wolfe"],
     "callbacks.polish"),
])
def test_a_problem_it_cannot_build_is_refused_naming_the_key(tmp_path, overrides, message):
    result = run_cli(["+experiment=le2023_landscape", *overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and message in output and "Traceback" not in output, output
    assert not (tmp_path / "run" / "checkpoints").exists()
