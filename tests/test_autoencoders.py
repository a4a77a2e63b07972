"""The unrolled autoencoders (PUDLE, Tolooshams & Ba 2022; group-sparse, Theodosis et al.) against
written-out references in float64: encoders, the three dictionary gradients, the block soft threshold,
unit-norm atoms after the trainer's step, loaded dictionaries, and the YAML files through the run flow."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_cfg
from test_densae import authors_pads
from unroll_cli.errors import ConfigError
from unroll_cli.validation import validate
from unroll_cli.models.autoencoders import GroupSparseAutoencoder, SparseAutoencoder
from unroll_cli.models.prox import group_soft_threshold, nonneg_soft_threshold, soft_threshold
from unroll_cli.run import build_model
from unroll_cli.tasks.denoising import DenoisingTask
from unroll_cli.train.layerwise import LayerwiseTrainer
from unroll_cli.train.trainer import Trainer


@pytest.fixture(autouse=True)
def float64():
    """Models built, and references computed, in float64."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)


# ----------------------------------------------------------------------------- written-out references
def soft(v, b):
    return torch.sign(v) * torch.clamp(v.abs() - b, min=0)


def group_shrink(v, b, size, one_sided=False):
    """Block soft threshold of a vector, one group at a time."""
    out = []
    for g in v.split(size):
        norm = torch.linalg.vector_norm(g)
        scale = torch.clamp(1 - b / norm, min=0) if norm > 0 else 0 * norm
        out.append(scale * (torch.relu(g) if one_sided else g))
    return torch.cat(out)


def unrolled(D, x, step, b, layers, shrink=soft, fista=False):
    """Codes z_t and reconstructions D z_t of each sample (rows of x), t = 1..layers: ISTA
    z <- S(y - step D^T (D y - x)) at y = z, or FISTA's y (Beck & Teboulle 2009)."""
    codes, recs = [], []
    for xn in x:
        z_prev = y = torch.zeros(D.shape[1])
        tk, zs = 1.0, []
        for _ in range(layers):
            z = shrink(y - step * D.T @ (D @ y - xn), b)
            tk_next = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
            y = z + (tk - 1) / tk_next * (z - z_prev) if fista else z
            z_prev, tk = z, tk_next
            zs.append(z)
        codes.append(torch.stack(zs))
        recs.append(torch.stack([D @ z for z in zs]))
    return torch.stack(codes, 1), torch.stack(recs, 1)  # (layers, N, p), (layers, N, d)


def conv_matrix(W, stride, height, width):
    """The (C*H*W, K*H'*W') matrix of conv_transpose2d, one code entry (column) at a time."""
    K, _, k, _ = W.shape
    rows, cols = (height - k) // stride + 1, (width - k) // stride + 1
    columns = [F.pad(W[a], (stride * v, width - stride * v - k, stride * u, height - stride * u - k))
               for a in range(K) for u in range(rows) for v in range(cols)]
    return torch.stack([c.reshape(-1) for c in columns], 1)


def denoising_loss(outputs, batch, model):
    """The denoising task's loss: 0.5 * sum over pixels, mean over the batch, + the model's penalty."""
    return 0.5 * ((batch[1] - outputs[-1]) ** 2).flatten(1).sum(1).mean() + model.loss_penalty()


def dense(cls=SparseAutoencoder, **options):
    settings = dict(input_dim=12, atoms=8, layers=5, lam=0.5, step=0.2, init="random")
    return cls(1, conv=False, **{**settings, **options})


# ----------------------------------------------------------------------------- encoders and gradients
def test_g_dec_gradient_is_the_decoder_closed_form():
    model, x = dense(grad="g_dec"), torch.randn(3, 1, 3, 4)
    D = model.weight.detach().clone()
    z = unrolled(D, x.flatten(1), model.step, model.lam * model.step, model.layers)[0][-1]
    denoising_loss(model(x), (x, x), model).backward()
    residual = z @ D.T - x.flatten(1)
    torch.testing.assert_close(model.weight.grad, residual.T @ z / len(x), rtol=1e-12, atol=1e-14)
    penalty = model.loss_penalty()
    assert not penalty.requires_grad
    torch.testing.assert_close(penalty, model.lam * z.abs().sum() / len(x))


@pytest.mark.parametrize("cls, grad", [(SparseAutoencoder, "g_ae_ls"), (SparseAutoencoder, "g_ae_lasso"),
                                       (GroupSparseAutoencoder, "g_ae_lasso")])
def test_g_ae_gradients_equal_autograd_through_a_written_out_loop(cls, grad):
    group = cls is GroupSparseAutoencoder
    model = dense(cls, grad=grad, **({"group_size": 2} if group else {}))
    x = torch.randn(3, 1, 3, 4)
    D = model.weight.detach().clone().requires_grad_()
    shrink = (lambda v, b: group_shrink(v, b, 2)) if group else soft
    codes, recs = unrolled(D, x.flatten(1), model.step, model.lam * model.step, model.layers, shrink)
    z = codes[-1]
    penalty = torch.linalg.vector_norm(z.unflatten(1, (4, 2)), dim=2).sum() if group else z.abs().sum()
    lasso = model.lam * penalty if grad == "g_ae_lasso" else 0
    loss = (0.5 * ((recs[-1] - x.flatten(1)) ** 2).sum() + lasso) / 3
    expected, = torch.autograd.grad(loss, D)
    model_loss = denoising_loss(model(x), (x, x), model)
    model_loss.backward()
    torch.testing.assert_close(model_loss, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model.weight.grad, expected, rtol=1e-10, atol=1e-12)
    if grad == "g_ae_ls":
        assert torch.equal(model.loss_penalty(), torch.zeros(()))


@pytest.mark.parametrize("encoder", ["ista", "fista"])
def test_conv_encoder_equals_the_dense_encoder_on_the_convolution_matrix(encoder):
    """8x9 images, 3x3 filters, stride 2: the transposed convolution needs an output padding of 1 rows."""
    model = SparseAutoencoder(2, filters=3, kernel_size=3, stride=2, layers=4, lam=0.3, step=0.2,
                              encoder=encoder)
    x = torch.randn(2, 2, 8, 9)
    W = model.weight.detach().clone().requires_grad_()
    M = conv_matrix(W, 2, 8, 9)
    recs = unrolled(M, x.flatten(1), 0.2, 0.3 * 0.2, 4, fista=encoder == "fista")[1]
    outputs = model(x)
    assert [o.shape for o in outputs] == [x.shape] * 4
    torch.testing.assert_close(torch.stack(outputs).flatten(2), recs, rtol=1e-12, atol=1e-13)
    expected, = torch.autograd.grad(0.5 * ((recs[-1] - x.flatten(1)) ** 2).sum() / 2, W)
    denoising_loss(outputs, (x, x), model).backward()
    torch.testing.assert_close(model.weight.grad, expected, rtol=1e-10, atol=1e-12)


def test_shifts_average_the_encoder_over_the_reflect_padded_shifted_copies():
    """model.shifts, 11x13 images, 4x4 filters at stride 3: each layer's output, and the g_ae-ls gradient
    through the whole unrolled encoder, are those of the mean over the 9 shifted copies (the authors'
    pads, test_densae.authors_pads) of ISTA on each copy's convolution matrix, cut to the image."""
    model = SparseAutoencoder(1, filters=3, kernel_size=4, stride=3, shifts=True, layers=4, lam=0.3, step=0.2)
    x = torch.randn(2, 1, 11, 13)
    W = model.weight.detach().clone().requires_grad_()
    left, right, top, bottom = authors_pads(11, 13, 4, 3)
    copies = []
    for i in range(3):
        for j in range(3):
            padded = F.pad(x, (left - j, right + j, top - i, bottom + i), mode="reflect")
            recs = unrolled(conv_matrix(W, 3, *padded.shape[-2:]), padded.flatten(1), 0.2, 0.3 * 0.2, 4)[1]
            copies.append(recs.unflatten(2, padded.shape[1:])[..., top - i:top - i + 11, left - j:left - j + 13])
    expected = torch.stack(copies).mean(dim=0)
    outputs = model(x)
    torch.testing.assert_close(torch.stack(outputs), expected, rtol=1e-12, atol=1e-13)
    expected_grad, = torch.autograd.grad(0.5 * ((expected[-1] - x) ** 2).sum() / 2, W)
    denoising_loss(outputs, (x, x), model).backward()
    torch.testing.assert_close(model.weight.grad, expected_grad, rtol=1e-10, atol=1e-12)
    unshifted = SparseAutoencoder(1, filters=3, kernel_size=4, stride=3, layers=4, lam=0.3, step=0.2)
    with torch.no_grad():
        unshifted.weight.copy_(W)
        assert (unshifted(x)[-1] - outputs[-1]).abs().max() > 1e-2  # the option changes the estimate
    with pytest.raises(ValueError, match="model.shifts=true .* model.conv=true"):
        dense(shifts=True)


@pytest.mark.parametrize("grad", ["g_dec", "g_ae_lasso", "g_ae_ls"])
def test_pixel_mean_loss_is_the_authors_sparse_loss_on_images(grad):
    """data.loss_reduction=pixel_mean, PUDLE's SparseLoss on (N, 1, H, W) images written out: 0.5 * the
    squared error averaged over every pixel of both images, plus (lasso gradients) lam * |z_T| summed
    over the 3 filters and averaged over the 3 x 4 code positions of both images; its gradient is
    autograd's of that written-out loss through the dense rendering of the convolution."""
    model = SparseAutoencoder(1, filters=3, kernel_size=3, stride=2, layers=4, lam=0.3, step=0.2, grad=grad)
    x, clean = torch.randn(2, 1, 7, 9), torch.randn(2, 1, 7, 9)
    W = model.weight.detach().clone().requires_grad_()
    codes, recs = unrolled(conv_matrix(W, 2, 7, 9), x.flatten(1), 0.2, 0.3 * 0.2, 4)
    z = codes[-1].detach() if grad == "g_dec" else codes[-1]  # (2, 3 filters x 3 rows x 4 columns)
    xhat = conv_matrix(W, 2, 7, 9) @ z.T if grad == "g_dec" else recs[-1].T  # (63 pixels, 2)
    expected = ((clean.flatten(1).T - xhat) ** 2).sum() / (2 * 2 * 63)
    if grad != "g_ae_ls":
        expected = expected + 0.3 * z.abs().sum() / (2 * 3 * 4)
    task = DenoisingTask(25.0, [25.0], 0, 2, 0, "max", True, 0, 0, "cpu", loss_reduction="pixel_mean")
    loss = task.loss(model(x), (x, clean), model)  # the task takes the estimate in float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    loss.backward()
    torch.testing.assert_close(model.weight.grad, torch.autograd.grad(expected, W)[0], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("cls", [SparseAutoencoder, GroupSparseAutoencoder])
def test_fista_encoder_matches_a_written_out_fista_loop(cls):
    group = cls is GroupSparseAutoencoder
    model = dense(cls, encoder="fista", layers=7, **({"group_size": 2, "two_sided": False} if group else {}))
    x = torch.randn(4, 1, 3, 4)
    shrink = (lambda v, b: group_shrink(v, b, 2, one_sided=True)) if group else soft
    recs = unrolled(model.weight.detach(), x.flatten(1), 0.2, 0.1, 7, shrink, fista=True)[1]
    with torch.no_grad():
        for depth in (7, 3):
            outputs = torch.stack(model(x, depth=depth)).flatten(2)
            torch.testing.assert_close(outputs, recs[:depth], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("threshold, two_sided, shrink", [
    ("soft", True, soft),
    ("soft", False, lambda v, b: torch.clamp(v - b, min=0)),
    ("hard", True, lambda v, b: torch.where(v.abs() > b, v, 0)),
    ("hard", False, lambda v, b: torch.where(v > b, v, 0)),
])
def test_each_threshold_in_the_first_layer(threshold, two_sided, shrink):
    model = dense(threshold=threshold, two_sided=two_sided, lam=1.5, step=0.3)
    x = 3 * torch.randn(5, 1, 3, 4)
    D = model.weight.detach()
    z = shrink(0.3 * x.flatten(1) @ D, 0.45)
    assert 0 < (z != 0).sum() < z.numel()
    with torch.no_grad():
        torch.testing.assert_close(model(x, depth=1)[0], (z @ D.T).view_as(x), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- block soft threshold
def test_block_soft_threshold_meets_the_prox_optimality_conditions():
    """x = prox of lam * sum_g ||x_g||_2 at v: x_g = 0 if ||v_g|| <= lam, else
    v_g - x_g = lam x_g / ||x_g||."""
    lam, size = 1.0, 4
    v = (torch.randn(3, 3, size, 2, 2) * 1.5 * torch.rand(3, 3, 1, 2, 2)).flatten(1, 2)  # 3 groups of 4
    x = group_soft_threshold(v, lam, size, dim=1)
    small = 0
    for n, g, h, w in np.ndindex(3, 3, 2, 2):
        vg, xg = v[n, g * size:(g + 1) * size, h, w], x[n, g * size:(g + 1) * size, h, w]
        if torch.linalg.vector_norm(vg) <= lam:
            small += 1
            assert torch.equal(xg, torch.zeros(size))
        else:
            normal = lam * xg / torch.linalg.vector_norm(xg)
            torch.testing.assert_close(vg - xg, normal, rtol=1e-12, atol=1e-14)
    assert 0 < small < 36


def test_block_soft_threshold_of_groups_of_one_is_the_scalar_soft_threshold():
    v = torch.randn(4, 6, 3)
    torch.testing.assert_close(group_soft_threshold(v, 0.3, 1, dim=1), soft_threshold(v, 0.3))
    torch.testing.assert_close(group_soft_threshold(v, 0.3, 1, dim=1, one_sided=True),
                               nonneg_soft_threshold(v, 0.3))


def test_block_soft_threshold_by_hand():
    v = torch.tensor([[3.0, -4.0, 0.3, -0.4, -1.0, -2.0, 6.0, 8.0]])
    scale = 1 - 1 / math.sqrt(5)
    torch.testing.assert_close(group_soft_threshold(v, 1.0, 2, dim=1),
                               torch.tensor([[2.4, -3.2, 0, 0, -scale, -2 * scale, 5.4, 7.2]]))
    torch.testing.assert_close(group_soft_threshold(v, 1.0, 2, dim=1, one_sided=True),
                               torch.tensor([[2.4, 0, 0, 0, 0, 0, 5.4, 7.2]]))


@pytest.mark.parametrize("one_sided", [False, True])
def test_block_soft_threshold_of_an_all_zero_group_has_zero_gradients(one_sided):
    v = torch.randn(2, 6)
    v[1, 2:4] = 0
    v.requires_grad_()
    lam = torch.tensor(0.1, requires_grad=True)
    out = group_soft_threshold(v, lam, 2, dim=1, one_sided=one_sided)
    out.sum().backward()
    assert torch.equal(out[1, 2:4], torch.zeros(2)) and torch.equal(v.grad[1, 2:4], torch.zeros(2))
    assert torch.isfinite(v.grad).all() and torch.isfinite(lam.grad)


def test_block_soft_threshold_refuses_groups_that_do_not_divide_the_entries():
    with pytest.raises(ValueError, match="group_size=4"):
        group_soft_threshold(torch.randn(2, 6), 0.1, 4)


# ----------------------------------------------------------------------------- atoms and dictionaries
@pytest.mark.parametrize("conv", [True, False])
def test_the_trainers_step_leaves_unit_norm_atoms(conv):
    x = torch.rand(2, 1, 13, 13)
    options = dict(filters=4, kernel_size=5, stride=2) if conv else dict(atoms=6)

    def stepped(normalize):
        torch.manual_seed(1)
        model = SparseAutoencoder(1, conv=conv, init_images=x, normalize=normalize, layers=3, **options)
        settings = OmegaConf.create({"compile": False, "precision": "fp32", "cuda_graphs": False,
                                     "grad_clip": None})
        task = SimpleNamespace(device=torch.device("cpu"), loss=denoising_loss)
        trainer = Trainer(settings, model, task, OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.5}),
                          None, None)
        before = model.weight.detach().clone()
        trainer.train_step(trainer.make_optimizer(model.parameters()), (x + 0.1, x))
        assert not torch.equal(model.weight, before)
        return torch.linalg.vector_norm(model.weight.detach().flatten(1) if conv else model.weight.detach(),
                                        dim=1 if conv else 0)

    torch.testing.assert_close(stepped(True), torch.ones(4 if conv else 6))
    assert not torch.allclose(stepped(False), torch.ones(4 if conv else 6))


def test_a_dictionary_of_the_wrong_shape_is_one_value_error(tmp_path):
    file = tmp_path / "D.npy"
    np.save(file, np.zeros((8, 1, 5, 5)))
    with pytest.raises(ValueError) as error:
        SparseAutoencoder(2, filters=4, kernel_size=3, stride=1, dictionary_path=str(file))
    message = str(error.value)
    assert "dictionary_path" in message and str(file) in message
    assert "(8, 1, 5, 5)" in message and "(4, 2, 3, 3)" in message


@pytest.mark.parametrize("conv", [True, False])
def test_a_dictionary_loads_exactly_and_a_runs_dictionary_reloads(tmp_path, conv):
    options = dict(filters=4, kernel_size=3, stride=1) if conv else dict(atoms=5, input_dim=18)
    shape = (4, 2, 3, 3) if conv else (18, 5)
    array = 0.1 * np.random.default_rng(0).standard_normal(shape)
    np.save(tmp_path / "D.npy", array)
    model = SparseAutoencoder(2, conv=conv, step=0.01, dictionary_path=str(tmp_path / "D.npy"), **options)
    # used as saved: not rescaled to unit atoms (normalize is on), not cast, not transposed
    assert torch.equal(model.weight.detach(), torch.from_numpy(array))
    np.save(tmp_path / "saved.npy", model.dictionaries()["D"].numpy())  # what a run writes as dictionary.npy
    again = SparseAutoencoder(2, conv=conv, step=0.01, dictionary_path=str(tmp_path / "saved.npy"), **options)
    assert torch.equal(again.weight, model.weight)


def test_data_atoms_are_normalised_training_patches():
    images = torch.rand(3, 1, 12, 12)
    model = GroupSparseAutoencoder(1, filters=8, kernel_size=5, stride=2, group_size=2, init_images=images)
    patches = images.unfold(2, 5, 1).unfold(3, 5, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, 5, 5)
    patches = patches / torch.linalg.vector_norm(patches, dim=(1, 2, 3), keepdim=True)
    for atom in model.dictionaries()["D"]:
        assert torch.isclose(patches, atom).flatten(1).all(1).any()


def test_a_step_with_which_the_encoder_diverges_is_refused_unless_asked_for(one_thread):
    images = torch.rand(4, 1, 40, 40)
    with pytest.raises(ValueError, match=r"step=0\.1: the encoder diverges.*check_step=false"):
        GroupSparseAutoencoder(1, step=0.1, init_images=images)

    def errors(step, **options):  # ||D z_t - x|| after each layer, on the same data atoms
        torch.manual_seed(1)
        model = GroupSparseAutoencoder(1, step=step, init_images=images, **options)
        with torch.no_grad():
            return [torch.linalg.vector_norm(out - images).item() for out in model(images)]

    # the refusal was right: built anyway, that encoder's error grows at every layer, by orders of
    # magnitude, where the accepted default step's error never grows
    diverging, converging = errors(0.1, check_step=False), errors(0.003)
    assert all(b > 10 * a for a, b in zip(diverging, diverging[1:]))
    assert all(b <= a for a, b in zip(converging, converging[1:]))


# ----------------------------------------------------------------------------- the YAML files
def denoising_task(images):
    return SimpleNamespace(kind="denoising", device=torch.device("cpu"), batch_size=1, eval_batch_size=1,
                           model_kwargs=lambda: {"in_channels": 1, "init_images": images})


THRESHOLDS = {("soft", True): soft, ("soft", False): lambda v, b: torch.clamp(v - b, min=0),
              ("hard", True): lambda v, b: torch.where(v.abs() > b, v, 0),
              ("hard", False): lambda v, b: torch.where(v > b, v, 0)}


def channel_groups(size, filters, one_sided=False):
    """The block soft threshold of a convolutional code (filters, rows, cols) flattened filter-major:
    groups of ``size`` consecutive channels at each position (one-sided: the scale of the group's own
    norm times the group's ReLU)."""
    def shrink(v, b):
        z = v.view(filters // size, size, -1)
        scale = torch.clamp(1 - b / torch.linalg.vector_norm(z, dim=1, keepdim=True), min=0)
        return (scale * (torch.relu(z) if one_sided else z)).reshape(-1)
    return shrink


@pytest.mark.parametrize("name", ["sparse_ae", "group_sparse_ae"])
def test_the_yaml_files_build_the_denoising_recipe_through_the_run_flow(name, one_thread):
    """What each YAML file builds through the run flow is its written-out encoder, with the step,
    threshold, stride and depth the file sets, and its step is inside ISTA's convergence condition
    step * ||D||^2 < 2, with ||D|| the spectral norm of the dense matrix of the built convolution;
    the model's own check refuses a step just beyond that bound and takes one just inside it."""
    cfg = compose_cfg([f"model={name}"])
    validate(cfg)
    m, side = cfg.model, 29  # 29 = 9 + 4 * 5: the 9x9 stride-4 windows tile the image
    images = torch.rand(8, 1, side, side)
    torch.manual_seed(1)
    model = build_model(cfg.model, denoising_task(images), cfg)
    group = name == "group_sparse_ae"
    assert isinstance(model, GroupSparseAutoencoder if group else SparseAutoencoder)
    D = conv_matrix(model.weight.detach(), m.stride, side, side)
    norm2 = torch.linalg.eigvalsh(D @ D.T)[-1].item()
    assert m.step * norm2 < 2
    for factor, refused in ((0.98, False), (1.02, True)):
        near = cfg.model.copy()
        near.step = factor * 2 / norm2
        torch.manual_seed(1)  # the same atoms
        if refused:
            with pytest.raises(ConfigError, match="the encoder diverges"):
                build_model(near, denoising_task(images), cfg)
        else:
            build_model(near, denoising_task(images), cfg)

    shrink = (channel_groups(m.group_size, model.weight.shape[0], one_sided=not m.two_sided) if group
              else THRESHOLDS[m.threshold, m.two_sided])
    x = images[:2]
    recs = unrolled(D, x.flatten(1), m.step, m.lam * m.step, m.layers, shrink, fista=m.encoder == "fista")[1]
    with torch.no_grad():
        outputs = torch.stack(model(x)).flatten(2)
    torch.testing.assert_close(outputs, recs, rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="trainer=layerwise"):
        LayerwiseTrainer.check_model(model, name)


@pytest.mark.parametrize("override, key", [("model.grad=g_foo", "model.grad"),
                                           ("model.layers=100000000", "model.layers"),
                                           ("model.group_size=5", "group_size=5")])
def test_bad_values_are_refused_before_training(override, key):
    cfg = compose_cfg(["model=group_sparse_ae", override])
    with pytest.raises(ConfigError, match=key):
        validate(cfg)
        build_model(cfg.model, denoising_task(torch.rand(8, 1, 40, 40)), cfg)


def test_shifts_reach_the_model_from_the_config_and_inputs_too_small_for_the_pads_are_refused():
    cfg = compose_cfg(["model=sparse_ae", "model.shifts=true"])
    validate(cfg)
    assert build_model(cfg.model, denoising_task(torch.rand(8, 1, 40, 40)), cfg).shifts
    small = denoising_task(torch.rand(8, 1, 10, 10))
    small.model_kwargs = lambda: {"in_channels": 1, "input_sizes": {"data.crop": (10, 10)}}
    with pytest.raises(ConfigError, match="model.shifts=true.*data.crop, 10x10 pixels, is too small for the stride"):
        build_model(cfg.model, small, cfg)
