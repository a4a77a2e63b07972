"""ML-ISTA family (Sulam et al. 2020) against explicit computations written from the update
equations with F.conv2d / F.conv_transpose2d, in float64 on random weights, biases and steps."""

import math

import pytest
import torch
import torch.nn.functional as F

from unroll_cli.models.mlista import LBP, MLFISTA, MLISTA, MLLISTA, AllFree, conv2d, conv_transpose2d

D = torch.float64
# arch: (input channels, image size, strides of W1..W3, padding)
GEOMETRY = {"mnist": (1, 28, (2, 2, 1), 0), "cifar10": (3, 32, (2, 2, 2), 1), "mnist_small": (1, 28, (2, 2, 1), 0)}
ARCHS = list(GEOMETRY)
CLASSES = [MLISTA, MLFISTA, MLLISTA, LBP, AllFree]


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: see conftest


def randomize(model, seed=0):
    """Float64, every parameter random: unfolded kernels scaled so that about half of the codes
    are active, biases of both signs, steps away from 1 (a wrong sign or a missing term shows)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("W.", "B.")):
                p.mul_(4.0)
            elif name.startswith(("b.", "tail_b.")):
                p.copy_(0.05 * (2 * torch.rand(p.shape, generator=g, dtype=D) - 1))
            elif name.startswith("c."):
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=D))
    return model


def image(arch, batch=2, size=None, seed=1):
    C, H, _, _ = GEOMETRY[arch]
    size = size or H
    return torch.rand(batch, C, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


# -- explicit references ---------------------------------------------------------------
def conv(z, W, i, arch):
    _, _, strides, pad = GEOMETRY[arch]
    return F.conv2d(z, W, stride=strides[i], padding=pad)


def convT(g, W, i, arch, like):
    """W_i g with the spatial size of ``like`` (output_padding only for odd sizes)."""
    _, _, strides, pad = GEOMETRY[arch]
    s, k = strides[i], W.shape[-1]
    extra = tuple(n - ((h - 1) * s - 2 * pad + k) for n, h in zip(like.shape[-2:], g.shape[-2:]))
    return F.conv_transpose2d(g, W, stride=s, padding=pad, output_padding=extra)


def cnn_codes(x, W, b, c, arch):
    """gamma_i = ReLU(c_i conv(gamma_{i-1}, W_i) + b_i)."""
    gammas, h = [], x
    for i in range(3):
        h = F.relu(c[i] * conv(h, W[i], i, arch) + b[i])
        gammas.append(h)
    return gammas


def head(model, gamma):
    """CIFAR: ReLU(conv3x3 + b) x3, max-pool 2 after the 2nd and 3rd; then Linear + log_softmax."""
    for j, (W, b) in enumerate(zip(model.tail_W, model.tail_b)):
        gamma = F.relu(F.conv2d(gamma, W, padding=1) + b)
        if j > 0:
            gamma = F.max_pool2d(gamma, 2)
    logits = gamma.reshape(gamma.shape[0], -1) @ model.classifier.weight.t() + model.classifier.bias
    return torch.log_softmax(logits, dim=1)


def mlista_unfolding(x, gammas, W, b, c, arch, top=None):
    """One unfolding of ML-ISTA, all five transposed convolutions written out; ``top``
    (default gamma_3) is the point synthesised from and stepped from in layer 3 (ML-FISTA's Z)."""
    g1, g2, g3 = gammas
    z = g3 if top is None else top
    s2 = convT(z, W[2], 2, arch, g2)
    s1 = convT(s2, W[1], 1, arch, g1)
    g1 = F.relu(s1 - c[0] * conv(convT(s1, W[0], 0, arch, x) - x, W[0], 0, arch) + b[0])
    g2 = F.relu(s2 - c[1] * conv(convT(s2, W[1], 1, arch, g1) - g1, W[1], 1, arch) + b[1])
    g3 = F.relu(z - c[2] * conv(convT(z, W[2], 2, arch, g2) - g2, W[2], 2, arch) + b[2])
    return [g1, g2, g3]


def mlista_reference(model, x, T, arch, fista=False):
    W, b, c = list(model.W), list(model.b), list(model.c)
    gammas = cnn_codes(x, W, b, c, arch)
    t, previous = 1.0, gammas[2]
    for _ in range(T):
        t_prev, t = t, (1 + math.sqrt(1 + 4 * t * t)) / 2
        top = gammas[2] + (t_prev - 1) / t * (gammas[2] - previous) if fista else None
        previous = gammas[2]
        gammas = mlista_unfolding(x, gammas, W, b, c, arch, top)
    return head(model, gammas[2])


def mllista_reference(model, x, T, arch):
    """CNN through B, then g_{i-1} = B_i g_i top-down and
    gamma_i = ReLU(g_i - conv(convT(g_i, W_i), W_i) + conv(gamma_{i-1}, B_i) + b_i)."""
    W, B, b = list(model.W), list(model.B), list(model.b)
    g1, g2, g3 = cnn_codes(x, B, b, [1.0] * 3, arch)
    for _ in range(T):
        s2 = convT(g3, B[2], 2, arch, g2)
        s1 = convT(s2, B[1], 1, arch, g1)
        g1 = F.relu(s1 - conv(convT(s1, W[0], 0, arch, x), W[0], 0, arch) + conv(x, B[0], 0, arch) + b[0])
        g2 = F.relu(s2 - conv(convT(s2, W[1], 1, arch, g1), W[1], 1, arch) + conv(g1, B[1], 1, arch) + b[1])
        g3 = F.relu(g3 - conv(convT(g3, W[2], 2, arch, g2), W[2], 2, arch) + conv(g2, B[2], 2, arch) + b[2])
    return head(model, g3)


def lbp_reference(model, x, T, arch):
    """Layer by layer: CNN estimate of layer i, then T ISTA steps of layer i alone."""
    lower = x
    for i in range(3):
        W, b, c = model.W[i], model.b[i], model.c[i]
        gamma = F.relu(c * conv(lower, W, i, arch) + b)
        for _ in range(T):
            gamma = F.relu(gamma - c * conv(convT(gamma, W, i, arch, lower) - lower, W, i, arch) + b)
        lower = gamma
    return head(model, lower)


def allfree_reference(model, x, T, arch):
    """Copy 0 for the CNN pass; unfolding k: ReLU(g - conv(convT(g, W^(k-1)) - lower, W^(k)) + b^(k))."""
    gammas = cnn_codes(x, list(model.W[0]), list(model.b[0]), [1.0] * 3, arch)
    for k in range(1, T + 1):
        lower = x
        for i in range(3):
            Wp, Wk, bk = model.W[k - 1][i], model.W[k][i], model.b[k][i]
            gammas[i] = F.relu(gammas[i] - conv(convT(gammas[i], Wp, i, arch, lower) - lower, Wk, i, arch) + bk)
            lower = gammas[i]
    return head(model, gammas[2])


def cnn_reference(model, x, arch):
    """The feed-forward CNN with the kernels/steps each model's first pass uses."""
    if isinstance(model, MLLISTA):
        W, b, c = list(model.B), list(model.b), [1.0] * 3
    elif isinstance(model, AllFree):
        W, b, c = list(model.W[0]), list(model.b[0]), [1.0] * 3
    else:
        W, b, c = list(model.W), list(model.b), list(model.c)
    return head(model, cnn_codes(x, W, b, c, arch)[2])


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# -- tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cls", CLASSES)
def test_zero_unfoldings_is_the_cnn(arch, cls):
    C = GEOMETRY[arch][0]
    model = randomize(cls(arch, C, 10, 0))
    x = image(arch)
    close(model(x), cnn_reference(model, x, arch))
    deep = randomize(cls(arch, C, 10, 2), seed=3)
    close(deep(x, unfoldings=0), cnn_reference(deep, x, arch))


@pytest.mark.parametrize("arch", ARCHS)
def test_codes_are_neither_dead_nor_all_active(arch):
    """Guards the other tests against vacuous agreement (all codes zero)."""
    model = randomize(MLISTA(arch, GEOMETRY[arch][0], 10, 1))
    W, b, c = list(model.W), list(model.b), list(model.c)
    gammas = mlista_unfolding(image(arch), cnn_codes(image(arch), W, b, c, arch), W, b, c, arch)
    for g in gammas:
        assert 0.1 < (g > 0).double().mean().item() < 0.9


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("T", [1, 2])
def test_mlista_matches_written_out_unfoldings(arch, T):
    model = randomize(MLISTA(arch, GEOMETRY[arch][0], 10, T))
    x = image(arch)
    out = model(x)
    ref = mlista_reference(model, x, T, arch)
    close(out, ref)
    assert (out - head(model, cnn_codes(x, list(model.W), list(model.b), list(model.c), arch)[2])).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_mlista_gradients_match_written_out_unfolding(arch):
    model = randomize(MLISTA(arch, GEOMETRY[arch][0], 10, 1))
    x, y = image(arch), torch.tensor([3, 7])
    F.nll_loss(model(x), y).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.nll_loss(mlista_reference(model, x, 1, arch), y).backward()
    for n, p in model.named_parameters():
        close(ours[n], p.grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_memory_formats_and_odd_sizes_agree(arch):
    """Kernels stored contiguous or channels-last, input either way: the same output; an image
    size the layer-1 stride does not divide (MNIST 29x29, CIFAR 33x33) matches the reference."""
    C, H, _, _ = GEOMETRY[arch]
    model = randomize(MLISTA(arch, C, 10, 1))
    x = image(arch)
    expected = mlista_reference(model, x, 1, arch)
    close(model(x.contiguous(memory_format=torch.channels_last)), expected)
    close(model.to(memory_format=torch.contiguous_format)(x), expected)
    odd = image(arch, size=H + 1)
    close(model(odd), mlista_reference(model, odd, 1, arch))


@pytest.mark.parametrize("size, kernel, stride, padding", [
    ((4, 4), 4, 1, 0),   # MNIST W3: dense, 1x1 output
    ((2, 2), 3, 1, 1),   # CIFAR W6: dense, 2x2 output
    ((2, 3), 4, 2, 1),   # dense with shifted taps
    ((3, 3), 5, 1, 2),   # dense, 3x3 output
    ((3, 3), 5, 2, 2),   # dense, strided, 2x2 output
    ((8, 8), 4, 2, 1),   # plain convolution
    ((13, 13), 6, 2, 0),  # plain, transposed needs output padding
])
def test_conv_helpers_equal_torch(size, kernel, stride, padding):
    """conv2d / conv_transpose2d (dense when every output sees every input) against torch."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, *size, generator=g, dtype=D)
    W = torch.randn(7, 5, kernel, kernel, generator=g, dtype=D)
    b = torch.randn(7, generator=g, dtype=D)
    for fmt in (torch.contiguous_format, torch.channels_last):
        Wf, zf = W.contiguous(memory_format=fmt), z.contiguous(memory_format=fmt)
        out = conv2d(zf, Wf, b, stride, padding)
        close(out, F.conv2d(z, W, b, stride, padding))
        back = conv_transpose2d(out, Wf, stride, padding, size)
        extra = tuple(n - ((h - 1) * stride - 2 * padding + kernel) for n, h in zip(size, out.shape[-2:]))
        close(back, F.conv_transpose2d(out, W, None, stride, padding, extra))


@pytest.mark.parametrize("arch", ARCHS)
def test_mlfista_momentum(arch):
    """momentum=False is ML-ISTA exactly; with momentum it follows the FISTA extrapolation of
    gamma_3 and differs from ML-ISTA from the second unfolding on."""
    C = GEOMETRY[arch][0]
    fista = randomize(MLFISTA(arch, C, 10, 3))
    plain = MLFISTA(arch, C, 10, 3, momentum=False).double()
    ista = MLISTA(arch, C, 10, 3).double()
    plain.load_state_dict(fista.state_dict())
    ista.load_state_dict(fista.state_dict())
    x = image(arch)
    torch.testing.assert_close(plain(x), ista(x), rtol=0, atol=0)
    close(fista(x), mlista_reference(fista, x, 3, arch, fista=True))
    close(fista(x, unfoldings=1), ista(x, unfoldings=1))
    assert (fista(x) - ista(x)).abs().max() > 1e-6


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cls, unfoldings, reference", [
    (MLLISTA, 1, mllista_reference),  # the unfolding written out
    (LBP, 2, lbp_reference),  # the layer-by-layer loop
    (AllFree, 2, allfree_reference),  # the untied loop
])
def test_learned_variants_match_their_written_out_loops(arch, cls, unfoldings, reference):
    model = randomize(cls(arch, GEOMETRY[arch][0], 10, unfoldings))
    x = image(arch)
    close(model(x), reference(model, x, unfoldings, arch))


def test_allfree_cannot_run_more_unfoldings_than_it_has_kernels():
    model = AllFree("mnist", 1, 10, 2)
    with pytest.raises(ValueError, match="unfoldings"):
        model(image("mnist").float(), unfoldings=3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cls", CLASSES)
def test_fewer_unfoldings_equal_a_shallower_model(arch, cls):
    C = GEOMETRY[arch][0]
    deep = randomize(cls(arch, C, 10, 3))
    x = image(arch)
    for t in (1, 2):
        shallow = cls(arch, C, 10, t).double()
        state = deep.state_dict()
        if cls is AllFree:  # the first t+1 copies
            state = {k: v for k, v in state.items()
                     if not k.startswith(("W.", "b.")) or int(k.split(".")[1]) <= t}
        shallow.load_state_dict(state)
        close(deep(x, unfoldings=t), shallow(x))


PARAMETERS = {
    "mnist": {MLISTA: 604_909, MLFISTA: 604_909, LBP: 604_909, MLLISTA: 1_204_074, AllFree: 4_203_562},
    "cifar10": {MLISTA: 4_005_869, MLFISTA: 4_005_869, LBP: 4_005_869, MLLISTA: 4_171_242, AllFree: 4_999_466},
}
# mnist_small, from the shapes: kernels 8*1*36 + 20*8*36 + 20*20*16 = 12,448, biases 48, steps 3, the
# classifier 20*10 + 10 = 210 (ML-LISTA: a second set of kernels, no steps; all-free: 7 sets, no steps)
_KERNELS, _BIASES, _HEAD = 8 * 36 + 20 * 8 * 36 + 20 * 20 * 16, 8 + 20 + 20, 20 * 10 + 10
_SMALL = _KERNELS + _BIASES + 3 + _HEAD
PARAMETERS["mnist_small"] = {MLISTA: _SMALL, MLFISTA: _SMALL, LBP: _SMALL, MLLISTA: 2 * _KERNELS + _BIASES + _HEAD,
                             AllFree: 7 * (_KERNELS + _BIASES) + _HEAD}


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_equal_the_authors_code(arch):
    C = GEOMETRY[arch][0]
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(MLISTA(arch, C, 10, 0)) == PARAMETERS[arch][MLISTA]  # the CNN baseline
    for cls, expected in PARAMETERS[arch].items():
        assert count(cls(arch, C, 10, 6)) == expected, cls.__name__


@pytest.mark.parametrize("arch", ARCHS)
def test_initialisation_and_interface(arch):
    C, H, _, _ = GEOMETRY[arch]
    torch.manual_seed(0)
    model = MLLISTA(arch, C, 10, 6)
    for kernels in (model.W, model.B):
        for W in kernels:
            fan_in = W[0].numel()
            assert abs(W.std().item() * math.sqrt(fan_in) / 0.1 - 1) < 0.1
    for W in model.tail_W:
        assert abs(W.std().item() * math.sqrt(W[0].numel()) - 1) < 0.05
    for b, m in zip(model.b, [W.shape[0] for W in model.W]):
        assert b.shape == (1, m, 1, 1) and not b.any()
    ista = MLISTA(arch, C, 7, 4)
    assert ista.unfoldings == 4 and all(c.item() == 1.0 for c in ista.c)
    atoms = ista.dictionaries()["W1"]
    assert atoms.shape == ista.W[0].shape and not atoms.requires_grad
    out = ista(torch.rand(5, C, H, H))
    assert out.shape == (5, 7)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(5))
    assert AllFree(arch, C, 10, 2).dictionaries()["W1"].shape == ista.W[0].shape


@pytest.mark.parametrize("cls", CLASSES)
def test_invalid_arguments(cls):
    with pytest.raises(ValueError, match=r"^arch \(data.arch, the architecture the data calls for\) must be one of "
                                         r"cifar10, mnist, mnist_small, got 'svhn'$"):
        cls(arch="svhn")
    with pytest.raises(ValueError, match="unfoldings"):
        cls(unfoldings=-1)
    with pytest.raises(ValueError, match="unfoldings"):
        cls(unfoldings=2.5)
    model = cls(unfoldings=1)
    with pytest.raises(ValueError, match="unfoldings"):
        model(torch.rand(1, 1, 28, 28), unfoldings=-1)
    with pytest.raises(ValueError, match="momentum"):
        MLFISTA(momentum="yes")
