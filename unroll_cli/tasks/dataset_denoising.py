"""Denoising (or, at sigma 0, reconstruction) of a fixed-size gray image dataset, MNIST or
Fashion-MNIST: the interpretability experiment of PUDLE (Tolooshams & Ba, TMLR 2022, section 1.5 of
the project's research notes: a dense autoencoder on MNIST digits 0-4, their ``src/train_dense.py``).

The images are read by :func:`unroll_cli.data.images.load_dataset` (the classification task's readers),
scaled to [0, 1]; ``classes`` keeps the images of those labels (the paper: 0-4). Training batches are
whole images in a fresh random order every epoch, with fresh noise sigma/255 * N(0, 1) (none at sigma
0). Evaluation, PSNR and the report are :class:`unroll_cli.tasks.denoising.DenoisingTask`'s.

With a model whose code is a vector and whose atoms are images (a dense dictionary with ``encode``),
the report adds the representer view (:mod:`unroll_cli.evaluate.representer`): each learned atom
beside its least-squares form X (Z^T Z + rho I)^-1 Z^T and the training images that weigh most in it,
and one test reconstruction as a weighted sum of training images.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import torch
from omegaconf import DictConfig

from unroll_cli.schema import constrained, evaluation_only, positive, register_schema
from unroll_cli.data.images import SPLIT_SEED, dataset_folder, load_dataset
from unroll_cli.evaluate.representer import RepresenterView, representer_view
from unroll_cli.record import figures
from unroll_cli.tasks.denoising import (INIT_SEED, TEST_SIGMAS, Batch, DenoisingOptions, DenoisingTask,
                                       valid_test_sigmas)

GRAY_DATASETS = ("mnist", "fashion_mnist")
INIT_IMAGES = 1000  # the training images a model may initialise its dictionary from (every run)


def valid_classes(value) -> bool:
    """``data.classes``: null, or distinct labels in 0..9."""
    return value is None or (len(value) > 0 and len(set(value)) == len(value) and all(0 <= c <= 9 for c in value))


@register_schema("data", "mnist_denoise")
class DatasetDenoisingConfig(DenoisingOptions):
    """Gray 28x28 images (MNIST, Fashion-MNIST), noise sigma (0: reconstruction), whole images."""

    _target_: str = "unroll_cli.tasks.dataset_denoising.DatasetDenoising"
    name: str = constrained("mnist", "mnist or fashion_mnist", lambda v: v in GRAY_DATASETS)
    root: str = evaluation_only("${oc.env:UNROLL_DATA,./data}")
    download: bool = evaluation_only(True)
    classes: Optional[List[int]] = constrained(None, "null (all) or distinct labels in 0..9", valid_classes)
    sigma: float = constrained(0.0, "a noise std >= 0 on the 0-255 scale", lambda v: v >= 0)
    center: bool = False  # subtract the mean training image from every image (the silhouettes code)
    test_sigmas: List[float] = constrained([0.0], TEST_SIGMAS, valid_test_sigmas, changeable=True)
    batch_size: int = constrained(32, "an integer > 0", positive)
    eval_batch_size: int = constrained(1000, "an integer > 0", positive, evaluation=True)
    representer_images: int = constrained(6000, "an integer >= 0 (0: no representer view)",
                                          lambda v: v >= 0, changeable=True)
    representer_rho: float = constrained(1e-3, "a number > 0", positive, changeable=True)
    representer_atoms: int = constrained(8, "an integer > 0", positive, changeable=True)
    representer_top: int = constrained(6, "an integer > 0", positive, changeable=True)


class DatasetDenoising(DenoisingTask):
    """The denoising Task on a gray image dataset (module docstring).

    ``val_size`` holds out a fixed random subset of the training images (seed ``SPLIT_SEED``, the same
    for every run seed) and ``n_train`` keeps a fixed random subset of the rest; ``n_test`` keeps the
    first test images. ``center`` subtracts the mean of the training images kept (after ``n_train``
    and ``val_size``) from every image, as the silhouettes code subtracts its training mean; the images
    then leave [0, 1], so it needs ``clamp`` false and a numeric ``psnr_peak``. The representer view
    uses ``representer_images`` training images, the same number of each class (a fixed random
    choice), and ridge ``representer_rho``.
    """

    def __init__(self, name: str = "mnist", root: str = "./data", download: bool = True,
                 classes: Sequence[int] | None = None, sigma: float = 0.0, test_sigmas: Sequence[float] = (0.0,),
                 test_seed: int = 0, batch_size: int = 32, eval_batch_size: int = 1000, n_train: int | None = None,
                 n_test: int | None = None, val_size: int = 0, psnr_peak: str | float = "max", clamp: bool = True,
                 n_figures: int = 3, representer_images: int = 6000, representer_rho: float = 1e-3,
                 representer_atoms: int = 8, representer_top: int = 6, center: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", trainer: DictConfig | None = None,
                 loss_reduction: str = "sum"):
        if center and (clamp or psnr_peak == "max"):
            key = "data.clamp=true" if clamp else "data.psnr_peak=max"
            raise ValueError(f"data.center=true gives images outside [0, 1], but {key} assumes them: set "
                             "data.clamp=false and data.psnr_peak to a number (1.0: the PSNR is -10 log10 MSE)")
        super().__init__(sigma, test_sigmas, test_seed, batch_size, val_size, psnr_peak, clamp, n_figures,
                         seed, device, loss_reduction)
        if name not in GRAY_DATASETS:
            raise ValueError(f"data.name={name!r}: expected one of {', '.join(GRAY_DATASETS)}")
        self.name, self.classes = name, None if classes is None else sorted(int(c) for c in classes)
        self.eval_batch_size = int(eval_batch_size)
        self.representer = dict(images=int(representer_images), rho=float(representer_rho),
                                atoms=int(representer_atoms), top=int(representer_top))
        train_x, train_y, test_x, test_y = self._kept(*load_dataset(name, root, download))
        self.data_source = f"{name} from {dataset_folder(name, root)}"
        train, val = self._split(len(train_x), n_train, val_size)
        self.train_images, self.train_labels = train_x[train].to(self.device).float() / 255.0, train_y[train]
        self.center = bool(center)
        self.mean_image = self.train_images.mean(dim=0) if center else torch.zeros_like(self.train_images[0])
        self.train_images -= self.mean_image
        scaled = lambda images: (images.to(self.device).float() / 255.0 - self.mean_image)  # noqa: E731
        if n_test is not None and n_test > len(test_x):
            raise ValueError(f"data.n_test={n_test}: {name} holds {len(test_x)} test images of these classes")
        test_x = test_x[:n_test]
        self._set_images([f"test_{i}" for i in range(len(test_x))], list(scaled(test_x)[:, 0]),
                         list(scaled(train_x[val])[:, 0]))
        self.steps_per_epoch = math.ceil(len(self.train_images) / self.batch_size)
        self.samples_per_epoch = len(self.train_images)
        gen = torch.Generator().manual_seed(INIT_SEED)
        picks = torch.randperm(len(self.train_images), generator=gen)[:INIT_IMAGES]
        self.init_images = self.train_images[picks.to(self.device)].cpu()

    def _kept(self, train_x, train_y, test_x, test_y) -> tuple[torch.Tensor, ...]:
        """The images of ``classes`` (all when null)."""
        if self.classes is None:
            return train_x, train_y, test_x, test_y
        keep = torch.tensor(self.classes)
        train, test = torch.isin(train_y, keep), torch.isin(test_y, keep)
        if not train.any() or not test.any():
            raise ValueError(f"data.classes={self.classes}: {self.name} has no training or no test images "
                             "of these classes")
        return train_x[train], train_y[train], test_x[test], test_y[test]

    def _split(self, n: int, n_train: int | None, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the training and validation images (module docstring)."""
        if val_size + (n_train or 0) > n or val_size >= n:
            raise ValueError(f"data.val_size={val_size} + data.n_train={n_train}: {self.name} holds {n} "
                             "training images of these classes (at least one must remain for training)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
        return order[val_size:][:n_train], order[:val_size]

    @staticmethod
    def memory_estimate(data: DictConfig, trainer: DictConfig) -> dict[str, int]:
        """Bytes of a training batch, of an evaluation batch's per-layer estimates (16 layers), and of
        the representer view's n x n float64 system (twice: the matrix and its factorisation)."""
        pixels = 28 * 28
        return {"data.batch_size": 3 * 4 * data.batch_size * pixels,
                "data.eval_batch_size": 2 * 4 * 16 * data.eval_batch_size * pixels,
                "data.representer_images": 2 * 8 * data.representer_images ** 2}

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        """One (gray) channel, up to 1000 training images to initialise a dictionary from, and the one
        size of every input (:class:`unroll_cli.tasks.denoising.DenoisingTask`)."""
        side = self.train_images.shape[-1]
        return {"in_channels": 1, "init_images": self.init_images,
                "input_sizes": {f"the {self.name} images (data.name={self.name})": (side, side)}}

    def train_batches(self) -> Iterator[Batch]:
        """One epoch of (noisy, clean) batches of whole images in a fresh random order."""
        order = torch.randperm(len(self.train_images), generator=self.gen, device=self.device)
        for i in range(self.steps_per_epoch):
            clean = self.train_images[order[i * self.batch_size:(i + 1) * self.batch_size]]
            if self.sigma == 0:
                yield clean, clean
            else:
                noise = torch.randn(clean.shape, generator=self.gen, device=self.device)
                yield clean + self.sigma / 255.0 * noise, clean

    # ------------------------------------------------------------------ the representer view
    def _representer_images(self) -> torch.Tensor:
        """Indices of the view's training images: the same number of each class, a fixed random choice."""
        gen = torch.Generator().manual_seed(SPLIT_SEED)
        labels = self.train_labels.unique().tolist()
        per_class = self.representer["images"] // len(labels)
        picks = [torch.nonzero(self.train_labels == c).flatten() for c in labels]
        return torch.cat([p[torch.randperm(len(p), generator=gen)[:per_class]] for p in picks])

    def interpretation(self, model: torch.nn.Module, model_name: str) -> tuple[dict, dict, list[str]]:
        """The representer view's metrics, figures and results.md paragraphs, when the model allows it."""
        if not self.representer["images"]:
            return {}, {}, []
        view = representer_view(model, self.train_images[self._representer_images()],
                                self.test_noisy[self.headline_sigma][0][None, None], self.representer["rho"])
        if isinstance(view, str):
            return {}, {}, [f"## Representer view\n\nNot drawn: {view}"]
        shown = view.atom_errors[self._most_used(view)]
        metrics = {"representer/dictionary_rel_error": view.dictionary_error,
                   "representer/atom_rel_error_median": view.atom_errors.median().item(),
                   "representer/shown_atoms_rel_error_max": shown.max().item(),
                   "representer/reconstruction_rel_error": view.reconstruction_error}
        n, rho = view.train_images.shape[0], self.representer["rho"]
        lines = ["## Representer view (Tolooshams & Ba 2022)",
                 f"With the codes Z of {n} training images X (the same number per class), the ridge "
                 f"least-squares dictionary X (Z^T Z + {rho:g} I)^-1 Z^T differs from the learned one by "
                 f"{view.dictionary_error:.3g} (relative Frobenius error; atom by atom: median "
                 f"{metrics['representer/atom_rel_error_median']:.3g}, at most {shown.max():.3g} over the "
                 f"{len(shown)} atoms shown; rarely used atoms have ill-determined least-squares forms), "
                 f"and the test reconstruction D z as a weighted sum of training images X beta by "
                 f"{view.reconstruction_error:.3g}. "
                 "representer_atoms.png: the most used atoms, each beside its least-squares form and the "
                 "training images that weigh most in it; representer_reconstruction.png: the first test "
                 "image, its reconstruction, and the training images that weigh most in it."]
        return metrics, self._representer_figures(view, model_name), lines

    def _most_used(self, view: RepresenterView) -> torch.Tensor:
        """Indices of the ``representer_atoms`` atoms with the largest summed |code|, most used first."""
        return view.usage.topk(min(self.representer["atoms"], len(view.usage))).indices

    def _representer_figures(self, view: RepresenterView, model_name: str) -> dict:
        top, used = self.representer["top"], self._most_used(view)
        rows = [[(f"atom {j}", view.atoms[j]), (f"least-squares form (error {view.atom_errors[j]:.2f})",
                                                 view.ls_atoms[j])] for j in used.tolist()]
        return {"representer_atoms.png": figures.representer_figure(
                    rows, view.train_images, view.atom_weights[used], top,
                    f"{model_name}: atoms as weighted sums of training images"),
                "representer_reconstruction.png": figures.representer_figure(
                    [[("test input", view.test_input), ("D z", view.reconstruction)]], view.train_images,
                    view.test_weights[None], top,
                    f"{model_name}: a test reconstruction as a weighted sum of training images")}

    def data_conventions(self) -> str:
        classes = "all classes" if self.classes is None else f"classes {self.classes}"
        centered = ", minus the mean training image" if self.center else ""
        return (f"Images: {self.name} ({classes}), uint8 / 255{centered}. Training: whole images, batches of "
                f"{self.batch_size} in a fresh random order every epoch.")

    def setting(self) -> str:
        """The published-table key: the dataset and the first test noise level (mnist_sigma0)."""
        return f"{self.name}_sigma{self.headline_sigma:g}"
