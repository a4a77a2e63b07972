"""The linear classifier on DenSaE's codes (model=densae_classifier) and its experiment: the log-probabilities
against FISTA written out with the matrices of full-size filters (float64), the joint loss at beta 0, 1 and
between against hand-written formulas through the classification task's loss, the frozen (disjoint)
mode's dictionaries after training steps, a tiny CLI run from a run directory's dictionaries, and the
refusals. Tiny MNIST files in the real format (test_classification_run.write_learnable_mnist)."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_cfg, read_metrics, run_cli
from test_classification_run import write_learnable_mnist
from test_sizes import refused
from unroll_cli.models.densae_classifier import DenSaEClassifier
from unroll_cli.tasks.classification import ImageClassification
from unroll_cli.validation import validate

SIDE, T, STEP, LAM, RHO = 6, 5, 0.125, 0.4, 2.0  # small images, full-size filters; rho 2 makes 1 + 1/rho visible


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_learnable_mnist(root / "MNIST/raw", np.random.default_rng(0), 120, 40)
    return root


def float64_classifier(beta: float = 0.5, split: str = "3A8B", **options) -> DenSaEClassifier:
    torch.manual_seed(0)
    return DenSaEClassifier(1, 4, SIDE, beta=beta, split=split, layers=T, lam=LAM, step=STEP, rho=RHO,
                            kernel_size=SIDE, stride=1, two_sided=False, **options).double()


def written_out(model: DenSaEClassifier, y: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, A x + B u) by hand: FISTA from zero with the matrices whose columns are the
    flattened filters, r = y - ((1 + 1/rho) A x~ + B u~), x = x~ + step A^T r, u = ReLU(u~ + step B^T r -
    lam step), one momentum; the feature [x; u] / ||[x; u]||, W f + b, minus its log-sum-exp."""
    A, B = model.encoder.A.detach().flatten(1).T, model.encoder.B.detach().flatten(1).T
    Y = y.flatten(1).T
    x_old = x_tmp = torch.zeros(A.shape[1], len(y), dtype=torch.float64)
    u_old = u_tmp = torch.zeros(B.shape[1], len(y), dtype=torch.float64)
    x_new, u_new, t_old = x_old, u_old, 1.0
    for _ in range(steps):
        r = Y - ((1 + 1 / RHO) * A @ x_tmp + B @ u_tmp)
        x_new, u_new = x_tmp + STEP * A.T @ r, torch.relu(u_tmp + STEP * B.T @ r - LAM * STEP)
        t_new = (1 + math.sqrt(1 + 4 * t_old ** 2)) / 2
        x_tmp, u_tmp = x_new + (t_old - 1) / t_new * (x_new - x_old), u_new + (t_old - 1) / t_new * (u_new - u_old)
        x_old, u_old, t_old = x_new, u_new, t_new
    code = torch.cat([x_new, u_new]).T
    norm = code.pow(2).sum(dim=1, keepdim=True).sqrt()
    feature = code / torch.where(norm > 0, norm, torch.ones_like(norm))
    logits = feature @ model.linear.weight.detach().T + model.linear.bias.detach()
    log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
    return log_probs, (A @ x_new + B @ u_new).T.reshape(y.shape)


Y = torch.rand(5, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
LABELS = torch.tensor([0, 3, 1, 1, 2])


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("split", ["3A8B", "0A8B"])
def test_the_log_probabilities_are_the_normalised_codes_through_the_linear_layer(split):
    model = float64_classifier(split=split)
    assert model.features == 11 - (3 if split == "0A8B" else 0) and model.unfoldings == T
    with torch.no_grad():
        for steps in (1, 2, T):
            expected, _ = written_out(model, Y, steps)
            torch.testing.assert_close(model(Y, steps), expected, rtol=0, atol=1e-10)
        # no step: the codes are FISTA's start, zero, and the logits the bias
        bias = model.linear.bias.double()
        torch.testing.assert_close(model(Y, 0), (bias - bias.exp().sum().log()).expand(5, -1), rtol=0, atol=1e-12)


def tiny_task(root: Path, batch_size: int = 8) -> ImageClassification:
    return ImageClassification("mnist", root=str(root), download=False, batch_size=batch_size)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_the_training_loss_is_the_weighted_reconstruction_and_cross_entropy(mnist_root, beta):
    """Through the classification task's loss: beta 1 is exactly the cross-entropy, beta 0 exactly the
    authors' reconstruction loss sum (y - A x - B u)^2 / batch, and between their weighted sum."""
    model, task = float64_classifier(beta), tiny_task(mnist_root)
    outputs = model(Y)
    loss = task.loss(outputs, (Y, LABELS), model)
    log_probs, estimate = written_out(model, Y, T)
    cross_entropy = -log_probs[torch.arange(5), LABELS].mean()
    reconstruction = (Y - estimate).pow(2).sum() / 5
    if beta == 1.0:  # exactly the task's cross-entropy of any model (float32 log-probabilities)
        assert loss.item() == torch.nn.functional.nll_loss(outputs.float(), LABELS).item()
    if beta == 0.0:
        torch.testing.assert_close(loss, reconstruction, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss.double(), (1 - beta) * reconstruction + beta * cross_entropy,
                               rtol=0, atol=1e-6)  # the task's cross-entropy is float32
    assert abs(reconstruction - cross_entropy) > 0.1  # a swapped weight would show


def test_the_test_metrics_hold_the_mean_reconstruction_error_of_the_test_images(mnist_root):
    """The classification task's test metrics of this model add its reconstruction error: the mean over
    the test images of sum (y - A x - B u)^2, here against the written-out FISTA in float64 over the
    task's preprocessed test images, in eval batches smaller than the set (a weighting error shows)."""
    task = tiny_task(mnist_root)
    task.eval_batch_size = 7
    torch.manual_seed(0)
    model = DenSaEClassifier(1, 10, 28, split="2A3B", layers=T, lam=LAM, step=STEP, rho=RHO, kernel_size=28,
                             stride=1, two_sided=False)
    scores = task.evaluate(model)
    images = task.preprocess(task.test_images).double()
    _, estimate = written_out(copy.deepcopy(model).double(), images, T)
    expected = (images - estimate).pow(2).flatten(1).sum(dim=1).mean().item()
    assert math.isclose(scores["reconstruction"], expected, rel_tol=1e-5)
    assert set(scores) == {"acc", "loss", "reconstruction"}


def write_run(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int = 2) -> dict[str, np.ndarray]:
    """A run directory's dictionary files (not unit-norm, so a renormalisation would change them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, arrays = np.random.default_rng(seed), {}
    for file, shape in shapes.items():
        arrays[file] = (rng.standard_normal(shape) / 14).astype(np.float32)  # atoms of norm about 2
        np.save(folder / file, arrays[file])
    return arrays


def test_the_frozen_encoder_keeps_a_runs_dictionaries_bit_for_bit_through_training(mnist_root, tmp_path):
    arrays = write_run(tmp_path / "ae", {"dictionary_A.npy": (2, 1, 28, 28), "dictionary_B.npy": (6, 1, 28, 28)})
    task = tiny_task(mnist_root)
    torch.manual_seed(0)
    model = DenSaEClassifier(1, 10, 28, beta=1.0, encoder_run=str(tmp_path / "ae"), train_encoder=False,
                             split="2A6B", layers=3, step=0.02, lam=0.5, kernel_size=28, stride=1,
                             two_sided=False, normalize=True)
    linear = model.linear.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _, batch in zip(range(4), task.train_batches()):  # the trainer's step: loss, step, after_step
        optimizer.zero_grad()
        task.loss(model(batch[0]), batch, model).backward()
        optimizer.step()
        model.after_step()
    for name in ("A", "B"):
        assert np.array_equal(model.dictionaries()[name].numpy(), arrays[f"dictionary_{name}.npy"])
    assert (model.linear.weight.detach() - linear).abs().max() > 1e-3
    unfrozen = DenSaEClassifier(1, 10, 28, encoder_run=str(tmp_path / "ae"), split="2A6B", kernel_size=28,
                                stride=1, normalize=True)  # trainable: its after_step renormalises them
    unfrozen.after_step()
    assert not np.array_equal(unfrozen.dictionaries()["B"].numpy(), arrays["dictionary_B.npy"])


# ----------------------------------------------------------------------------- runs and refusals
def mnist_args(root: Path, *extra: str) -> list[str]:
    return ["model=densae_classifier", "data=mnist", f"data.root={root}", "data.download=false",
            "data.batch_size=16", "model.layers=3", "trainer.max_epochs=2", "trainer.progress=false",
            "tensorboard=false", *extra]


def test_a_tiny_disjoint_run_from_a_run_directory_reports_test_accuracy(mnist_root, tmp_path, one_thread):
    """A CSCNet run directory's one dictionary.npy, frozen, beta 1: the run's own dictionary file is the
    one it read, and the classifier learned the blocks (chance: 10 %)."""
    arrays = write_run(tmp_path / "ae", {"dictionary.npy": (40, 1, 28, 28)})
    run_dir = tmp_path / "run"
    result = run_cli(mnist_args(mnist_root, "model.split=0A40B", f"model.encoder_run={tmp_path / 'ae'}",
                                "model.train_encoder=false", "model.beta=1", "optim.lr=0.05",
                                "trainer.max_epochs=4", f"hydra.run.dir={run_dir}"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    record = read_metrics(run_dir)
    assert record["status"] == "completed" and record["metrics"]["test/acc"] > 30
    assert record["metrics"]["test/reconstruction"] > 0
    assert np.array_equal(np.load(run_dir / "dictionary.npy"), arrays["dictionary.npy"])
    assert (run_dir / "figures" / "atoms.png").is_file()


def test_the_autoencoder_then_the_classifier_on_its_frozen_codes(mnist_root, tmp_path, one_thread):
    """The paper's disjoint steps: beta 0 trains the autoencoder alone (here with unit-norm filters and a
    learned threshold per sparse filter, CSCNet-LS's), then a run reads its dictionary_A.npy,
    dictionary_B.npy and thresholds.npy and keeps them."""
    ae, disjoint = tmp_path / "ae", tmp_path / "disjoint"
    result = run_cli(mnist_args(mnist_root, "model.split=2A6B", "model.beta=0", "model.normalize=true",
                                "model.learn_threshold=true", "model.threshold_init=0", f"hydra.run.dir={ae}"),
                     cwd=tmp_path)  # threshold 0: the sparse code is active on these faint images
    assert result.returncode == 0, result.stdout + result.stderr
    A = np.load(ae / "dictionary_A.npy")
    assert A.shape == (2, 1, 28, 28) and np.allclose(np.linalg.norm(A.reshape(2, -1), axis=1), 1, atol=1e-6)
    thresholds = np.load(ae / "thresholds.npy")
    assert thresholds.shape == (6,) and np.ptp(thresholds) > 0  # learned: no longer all threshold_init
    result = run_cli(mnist_args(mnist_root, "model.split=2A6B", f"model.encoder_run={ae}", "model.train_encoder=false",
                                "model.learn_threshold=true", "model.beta=1", f"hydra.run.dir={disjoint}"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_metrics(disjoint)["metrics"]["test/acc"] >= 0
    for name in ("dictionary_A", "dictionary_B", "thresholds"):
        assert np.array_equal(np.load(disjoint / f"{name}.npy"), np.load(ae / f"{name}.npy"))


@pytest.mark.parametrize("extra, named", [
    (["model.beta=1.5"], ["model.beta", "[0, 1]"]),
    (["model.beta=-0.1"], ["model.beta", "[0, 1]"]),
    (["model.split=4a60b"], ["model.split", "<n>A<m>B"]),
    (["model.train_encoder=false", "model.beta=0.5"], ["model.beta=0.5", "model.train_encoder=false"]),
    (["model.encoder_run=nowhere"], ["model.encoder_run", "nowhere"])])
def test_bad_values_are_refused_naming_the_key(mnist_root, tmp_path, extra, named):
    refused(tmp_path, mnist_args(mnist_root, *extra), *named)


@pytest.mark.parametrize("extra, named", [
    (["model.split=2A5B"], ["model.encoder_run", "dictionary_B.npy", "(6, 1, 28, 28)", "(5, 1, 28, 28)"]),
    (["model.split=2A6B", "model.learn_threshold=true"], ["model.encoder_run", "thresholds.npy"])])
def test_a_run_directory_that_does_not_fit_is_refused(mnist_root, tmp_path, extra, named):
    write_run(tmp_path / "ae", {"dictionary_A.npy": (2, 1, 28, 28), "dictionary_B.npy": (6, 1, 28, 28)})
    refused(tmp_path, mnist_args(mnist_root, f"model.encoder_run={tmp_path / 'ae'}", *extra), *named)


# ----------------------------------------------------------------------------- the experiment
def test_the_experiment_is_the_papers_mnist_settings():
    cfg = compose_cfg(["+experiment=tasissa2024_densae_mnist", "model.split=25A375B",
                       "model.encoder_run=RUN/ae/${model.split}"])
    validate(cfg)
    m = cfg.model
    assert (m.name, m.split, m.kernel_size, m.stride, m.layers, m.step, m.lam, m.two_sided) == (
        "densae_classifier", "25A375B", 28, 1, 15, 0.02, 0.5, False)
    assert m.encoder_run == "RUN/ae/25A375B" and m.beta == 0.5 and m.train_encoder
    assert (cfg.data.name, cfg.data.batch_size, cfg.optim.lr, cfg.optim.eps) == ("fashion_mnist", 16, 1e-3, 1e-15)
    assert cfg.optimized_metric == "test/acc"
