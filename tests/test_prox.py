"""Thresholding operators vs explicit elementwise / per-row reference computations."""

import math
import os
import subprocess
import sys

import pytest
import torch

from unroll_cli.models.prox import (
    block_soft_threshold,
    hard_threshold,
    nonneg_soft_threshold,
    selection_count,
    soft_threshold,
    support_selection_threshold,
)

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: see conftest


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def soft_ref(v: float, th: float) -> float:
    return math.copysign(max(abs(v) - th, 0.0), v) if v != 0 else 0.0


def elementwise(fn, x, theta):
    """Apply a scalar reference ``fn(v, th)`` entry by entry, theta broadcast to x."""
    th = torch.as_tensor(theta, dtype=x.dtype).expand_as(x)
    return torch.tensor([fn(v, t) for v, t in zip(x.flatten().tolist(), th.flatten().tolist())],
                        dtype=x.dtype).view_as(x)


@pytest.mark.parametrize("theta", [0.3, torch.tensor(0.3, dtype=D), torch.rand(7, dtype=D), 0.0, -0.2])
def test_soft_threshold_matches_formula(theta):
    x = torch.randn(5, 7, dtype=D, generator=gen())
    x[0, 0] = 0.0
    out = soft_threshold(x, theta)
    assert torch.equal(out, elementwise(soft_ref, x, theta))


def test_soft_threshold_float32_and_shapes():
    x = torch.randn(2, 3, 4, 5, generator=gen(1))
    out = soft_threshold(x, torch.full((1, 3, 1, 1), 0.5))
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, torch.sign(x) * torch.clamp(x.abs() - 0.5, min=0))


@pytest.mark.parametrize("theta_shape, low", [((), 0.2), ((7,), 0.2), ((5, 1), 0.2), ((), -0.8), ((7,), -0.8)])
def test_soft_threshold_gradients_match_analytic(theta_shape, low):
    x = torch.randn(5, 7, dtype=D, generator=gen(2), requires_grad=True)
    theta = (low + 0.6 * torch.rand(theta_shape, dtype=D, generator=gen(3))).requires_grad_()
    upstream = torch.randn(5, 7, dtype=D, generator=gen(4))
    (soft_threshold(x, theta) * upstream).sum().backward()

    active = (x.detach().abs() > theta.detach()).to(D)
    torch.testing.assert_close(x.grad, upstream * active, rtol=0, atol=1e-15)
    d_theta = -(upstream * torch.sign(x.detach()) * active)
    torch.testing.assert_close(theta.grad, d_theta.sum_to_size(theta_shape), rtol=1e-12, atol=1e-14)


def test_soft_threshold_gradcheck_away_from_kinks():
    x = torch.randn(4, 6, dtype=D, generator=gen(5))
    x = torch.where((x.abs() - 0.4).abs() < 0.05, x + 0.2 * torch.sign(x), x).requires_grad_()
    theta = torch.tensor(0.4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(soft_threshold, (x, theta))


def test_nonneg_and_hard_threshold_match_formulas():
    x = torch.randn(6, 5, dtype=D, generator=gen(6))
    assert torch.equal(nonneg_soft_threshold(x, 0.3), elementwise(lambda v, t: max(v - t, 0.0), x, 0.3))
    assert torch.equal(hard_threshold(x, 0.3), elementwise(lambda v, t: v if abs(v) > t else 0.0, x, 0.3))
    theta = torch.tensor(0.3, dtype=D, requires_grad=True)
    nonneg_soft_threshold(x, theta).sum().backward()
    assert theta.grad.item() == -(x > 0.3).sum().item()


@pytest.mark.parametrize("dim", [1, -1, (1, 2), 0])
def test_block_soft_threshold_matches_group_loop(dim):
    x = torch.randn(4, 3, 5, dtype=D, generator=gen(7))
    lam = 1.1
    dims = [d % x.dim() for d in (dim if isinstance(dim, tuple) else (dim,))]
    rest = [d for d in range(x.dim()) if d not in dims]
    xp = x.permute(*rest, *dims)
    ref = torch.empty_like(xp)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in xp.shape[:len(rest)]]).view(-1, len(rest)):
        g = xp[tuple(idx.tolist())]
        norm = math.sqrt(float((g * g).sum()))
        ref[tuple(idx.tolist())] = max(1 - lam / norm, 0.0) * g
    ref = ref.permute(*torch.argsort(torch.tensor(rest + dims)).tolist())
    torch.testing.assert_close(block_soft_threshold(x, lam, dim), ref, rtol=1e-14, atol=1e-15)


def test_block_soft_threshold_zero_group_is_safe():
    x = torch.randn(3, 4, dtype=D, generator=gen(8))
    x[1] = 0.0
    x.requires_grad_()
    lam = torch.tensor(0.5, dtype=D, requires_grad=True)
    out = block_soft_threshold(x, lam, dim=1)
    assert torch.equal(out[1], torch.zeros(4, dtype=D))
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(lam.grad).all()
    assert torch.equal(x.grad[1], torch.zeros(4, dtype=D))


def test_selection_count_rounding():
    assert selection_count(500, 1.2) == 6
    assert selection_count(500, 13) == 65
    assert selection_count(500, 12) == 60
    assert selection_count(500, 3.6) == 18   # 17.999... in floating point
    assert selection_count(10, 25) == 3      # 2.5 rounds up
    assert selection_count(10, 24) == 2
    assert selection_count(10, 0) == 0 and selection_count(10, 100) == 10
    for bad in (-1, 100.5):
        with pytest.raises(ValueError, match="percent"):
            selection_count(10, bad)


def ss_reference(x, theta, percent):
    """Slow shrink_ss: per row, sort the magnitudes; those above both the (k+1)-th largest and
    theta pass through (so of entries tied with the (k+1)-th largest, none does)."""
    out = torch.empty_like(x)
    th = torch.as_tensor(theta, dtype=x.dtype).expand_as(x)
    keep = torch.zeros_like(x, dtype=torch.bool)
    n = x.shape[-1]
    k = int(percent * n / 100 + 0.5)
    for i in range(x.shape[0]):
        magnitudes = sorted((abs(v) for v in x[i].tolist()), reverse=True)
        v_k1 = magnitudes[k] if k < n else -math.inf
        for j in range(n):
            v, t = x[i, j].item(), th[i, j].item()
            keep[i, j] = abs(v) > max(v_k1, t)
            out[i, j] = v if keep[i, j] else soft_ref(v, t)
    return out, keep


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("percent", [0.0, 1.2, 6.0, 13.0, 50.0, 100.0])
@pytest.mark.parametrize("per_coordinate", [False, True])
def test_support_selection_matches_row_loop(dtype, percent, per_coordinate):
    x = torch.randn(6, 50, dtype=dtype, generator=gen(9))
    theta = (0.3 + torch.rand(50, dtype=dtype, generator=gen(10))) if per_coordinate else 0.5
    ref, _ = ss_reference(x, theta, percent)
    assert torch.equal(support_selection_threshold(x, theta, percent), ref)


# One threshold for every entry takes the compiled CPU kernel; the same threshold given per
# coordinate takes the top-k of every row (the GPU's way): both must equal the row loop.
THETA_FORMS = {"scalar": lambda theta, n, dtype: theta,
               "0-d tensor": lambda theta, n, dtype: torch.tensor(theta, dtype=dtype),
               "per coordinate": lambda theta, n, dtype: torch.full((n,), theta, dtype=dtype)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", list(THETA_FORMS))
def test_support_selection_with_few_and_many_entries_above_the_threshold(dtype, form):
    # Rows with 0, 3, 5 (= k), 6 and 40 entries above theta=1: rows with at most k above it need no
    # search for the (k+1)-th largest; the result must still equal the row loop. Batch dims in
    # front must work too.
    x = 0.5 * torch.randn(5, 50, dtype=dtype, generator=gen(14)).clamp(-1.9, 1.9)
    for row, count in enumerate([0, 3, 5, 6, 40]):
        x[row, :count] = torch.linspace(1.5, 4.0, count, dtype=dtype) * (-1) ** row
    ref, keep = ss_reference(x, 1.0, 10.0)  # n=50, 10 % -> k=5
    assert keep.sum(1).tolist() == [0, 3, 5, 5, 5]
    theta = THETA_FORMS[form](1.0, 50, dtype)
    assert torch.equal(support_selection_threshold(x, theta, 10.0), ref)
    assert torch.equal(support_selection_threshold(x.view(5, 1, 50), theta, 10.0), ref.view(5, 1, 50))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", list(THETA_FORMS))
def test_support_selection_with_many_ties_equals_the_row_loop(dtype, form):
    # Magnitudes on a grid of 8 values: the (k+1)-th largest is tied in most rows, so a search
    # that stops between two neighbouring values, or lets a tied entry through, shows.
    x = torch.randint(-8, 9, (40, 60), generator=gen(15)).to(dtype) / 4
    for percent in (1.2, 10.0, 40.0):
        for theta in (0.0, -0.0, 0.3, 1.0):
            ref, _ = ss_reference(x, theta, percent)
            got = support_selection_threshold(x, THETA_FORMS[form](theta, 60, dtype), percent)
            assert torch.equal(got, ref)


@pytest.mark.parametrize("form", list(THETA_FORMS))
def test_support_selection_lets_nan_through(form):
    # A NaN must reach the loss, where the trainer stops the run; finite rows are unaffected.
    x = torch.randn(3, 50, dtype=D, generator=gen(16))
    x[1, 7] = float("nan")
    out = support_selection_threshold(x, THETA_FORMS[form](0.5, 50, D), 10.0)
    assert out[1, 7].isnan() and out.isnan().sum() == 1
    assert torch.equal(out[[0, 2]], ss_reference(x[[0, 2]], 0.5, 10.0)[0])


def test_support_selection_zero_percent_is_soft_threshold():
    x = torch.randn(4, 30, dtype=D, generator=gen(11))
    assert torch.equal(support_selection_threshold(x, 0.4, 0.0), soft_threshold(x, 0.4))


def test_support_selection_ties_at_the_boundary_are_thresholded():
    # n=10, 20 % -> k=2; the 3rd largest magnitude (2.0) ties with the 2nd.
    x = torch.tensor([[3.0, -2.0, 2.0, 0.5, 0.1, 0.0, -0.2, 1.0, 0.3, 0.4]], dtype=D)
    out = support_selection_threshold(x, 0.25, 20.0)
    expected = torch.tensor([[3.0, -1.75, 1.75, 0.25, 0.0, 0.0, 0.0, 0.75, 0.05, 0.15]], dtype=D)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)


def test_support_selection_gradient_has_no_path_through_the_mask():
    x = torch.randn(5, 40, dtype=D, generator=gen(12), requires_grad=True)
    theta = torch.tensor(0.3, dtype=D, requires_grad=True)
    upstream = torch.randn(5, 40, dtype=D, generator=gen(13))
    (support_selection_threshold(x, theta, 13.0) * upstream).sum().backward()

    # Independent: the same map with the row-loop mask as a constant.
    x2 = x.detach().clone().requires_grad_()
    theta2 = theta.detach().clone().requires_grad_()
    _, keep = ss_reference(x2.detach(), theta2.detach(), 13.0)
    ref = torch.where(keep, x2, torch.sign(x2) * torch.relu(x2.abs() - theta2))
    (ref * upstream).sum().backward()
    assert keep.any()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-15)
    torch.testing.assert_close(theta.grad, theta2.grad, rtol=1e-12, atol=1e-14)
    # Explicitly: pass-through entries get gradient 1 and contribute nothing to theta.
    assert torch.equal(x.grad[keep], upstream[keep])


def test_the_cpu_selection_kernel_keeps_pytorchs_thread_count():
    """numba's OpenMP pool shares PyTorch's libgomp and its start sets the thread count to the pool's;
    a run started with OMP_NUM_THREADS=1 must stay at one thread (in a fresh process, pool not started)."""
    script = ("import torch\n"
              "from unroll_cli.models.select_cpu import shrink_ss\n"
              "before = torch.get_num_threads()\n"
              "shrink_ss(torch.randn(64, 500), 0.1, 10)\n"
              "print(before, torch.get_num_threads())\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
