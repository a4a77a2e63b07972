"""The image denoising task of PUDLE (Tolooshams & Ba, TMLR 2022) and DenSaE (Tasissa et al., TMLR 2024):
remove additive white Gaussian noise from gray natural images, trained on random crops of CBSD432,
tested on the full BSD68 images by PSNR (the PUDLE code, btolooshams/stable-interpretable-unrolled-dl:
``src/train_conv_denoise.py``, ``src/utils/utils.py``).

Training (PUDLE's ``train_conv_denoise.py``): every step, random ``crop`` x ``crop`` windows of the
training images (zero-padded at the bottom/right when smaller), random horizontal and vertical flips,
and fresh noise sigma/255 * N(0, 1), not clipped; the loss is supervised (the target is the clean
image), its scale set by ``loss_reduction`` (:meth:`DenoisingTask.loss`). Test: every full test
image, one at a time (their sizes differ), with noise fixed by ``test_seed`` for each of ``test_sigmas``; or, with ``test_crop``, one fixed random window of each,
as the authors' logging loader (its PSNR is about 1 dB below the full images'); PSNR per image with the authors' ``compute_psnr``
convention by default (peak = max of the clean image, estimate clamped to [0, 1]), then the mean and
std over images. Images are read by :mod:`unroll_cli.data.image_folder` (gray = PIL's "L" luma).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from unroll_cli.errors import ConfigError
from unroll_cli.schema import constrained, evaluation_only, positive, register_schema
from unroll_cli.data.image_folder import image_files, load_gray, pad_to, random_flips, random_window
from unroll_cli.evaluate.metrics import psnr_db
from unroll_cli.record import figures
from unroll_cli.record.labels import model_title
from unroll_cli.record.report import Published, Report, Table, references
from unroll_cli.tasks.base import SeededStream

Batch = tuple[torch.Tensor, torch.Tensor]  # (noisy, clean), each (N, 1, crop, crop)
METRIC = "test/psnr"
INIT_SEED, INIT_CROPS = 0, 64  # the training crops a model may initialise its dictionary from (every run)
VAL_SPLIT = 1  # seeds the validation noise apart from the test noise

null_or_positive = lambda v: v is None or v > 0  # noqa: E731
LOSS_REDUCTIONS = {  # data.loss_reduction: how the training loss is scaled (DenoisingTask.loss), for results.md
    "sum": "0.5 x the squared error summed over the pixels, mean over the batch",
    "pixel_mean": "0.5 x the squared error averaged over the pixels and the batch (the authors' SparseLoss)"}


TEST_SIGMAS = "a non-empty list of noise stds >= 0 (0-255 scale), distinct as the metric names print them (test/psnr_s25)"


def valid_test_sigmas(values: list) -> bool:
    """``data.test_sigmas``: each level has its own metrics, named with ``{sigma:g}`` (25 and 25.0000001 clash)."""
    return len(values) > 0 and min(values) >= 0 and len({f"{s:g}" for s in values}) == len(values)


def valid_peak(value: Any) -> bool:
    """``data.psnr_peak``: "max" or a positive number."""
    return value == "max" or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)


@dataclass
class DenoisingOptions:
    """The options every denoising task shares: noise, test noise levels, PSNR conventions, sizes."""

    sigma: float = constrained(25.0, "a noise std >= 0 on the 0-255 scale", lambda v: v >= 0)
    test_sigmas: List[float] = constrained([25.0], TEST_SIGMAS, valid_test_sigmas, changeable=True)
    test_seed: int = constrained(0, "an integer >= 0", lambda v: v >= 0, evaluation=True)
    batch_size: int = constrained(1, "an integer > 0", positive)
    n_train: Optional[int] = constrained(None, "null (all) or an integer > 0", null_or_positive)
    n_test: Optional[int] = constrained(None, "null (all) or an integer > 0", null_or_positive, evaluation=True)
    val_size: int = constrained(0, "an integer >= 0 (0: validate on the test images)", lambda v: v >= 0)
    psnr_peak: Any = constrained("max", "max (the clean image's maximum) or a number > 0", valid_peak,
                                 evaluation=True)
    clamp: bool = True
    n_figures: int = constrained(3, "an integer >= 0", lambda v: v >= 0, changeable=True)
    # the training loss's scale: sum (over the pixels; PUDLE's DLLoss2D) or pixel_mean (PUDLE's SparseLoss
    # on images, the loss of their committed training logs); DenoisingTask.loss
    loss_reduction: str = constrained("sum", "sum or pixel_mean (the mean over the pixels, PUDLE's SparseLoss)",
                                      lambda v: v in LOSS_REDUCTIONS)


@register_schema("data", "bsd_denoise")
class ImageDenoisingConfig(DenoisingOptions):
    """Gray image denoising, AWGN at sigma (0-255 scale): CBSD432 crops for training, BSD68 for test."""

    _target_: str = "unroll_cli.tasks.denoising.ImageDenoising"
    train_dir: str = "${oc.env:UNROLL_DATA,./data}/CBSD432"
    test_dir: str = evaluation_only("${oc.env:UNROLL_DATA,./data}/BSD68")
    crop: int = constrained(129, "an integer > 0", positive)
    hflip: bool = True
    vflip: bool = True
    steps_per_epoch: Optional[int] = constrained(
        None, "null (one pass over the training images) or an integer > 0", null_or_positive)
    test_crop: Optional[int] = constrained(None, "null (full test images) or an integer > 0", null_or_positive,
                                           evaluation=True)


def sigma_metric(sigma: float) -> str:
    """The metric name of the test PSNR at one noise level: test/psnr_s25."""
    return f"{METRIC}_s{sigma:g}"


def first_of_each_size(names: list[str], images: list[torch.Tensor]) -> dict[str, tuple[int, int]]:
    """{name: (H, W)} of the first of the (H, W) ``images`` of each size, in their order."""
    sizes: dict[tuple[int, int], str] = {}
    for name, image in zip(names, images):
        sizes.setdefault(tuple(image.shape), name)
    return {name: size for size, name in sizes.items()}


def fixed_noisy(images: list[torch.Tensor], sigma: float, seed: int, split: int = 0) -> list[torch.Tensor]:
    """``images`` + sigma/255 * N(0, 1), not clipped, drawn on the CPU from a generator seeded by
    (seed, sigma, split) alone: the same noise in every run, on every device, whatever the other
    noise levels; image i's noise does not depend on how many images follow it."""
    key = np.random.SeedSequence([seed, round(sigma * 1000), split]).generate_state(1)[0]
    gen = torch.Generator().manual_seed(int(key))
    return [image + sigma / 255.0 * torch.randn(image.shape, generator=gen).to(image.device)
            for image in images]


def paper_variant(paper: DictConfig | None, model_name: str) -> str:
    """This run's key among a paper's values: the paper config's ``variant`` (e.g. ``soft_g_dec@0.16``),
    or the model's name."""
    return (paper.get("variant") if paper is not None else None) or model_name


def published_psnr(paper: DictConfig | None, setting: str, variant: str) -> float | None:
    """``paper.psnr[setting][variant]`` when the experiment's paper config has it."""
    if paper is None:
        return None
    value = ((paper.get("psnr") or {}).get(setting) or {}).get(variant)
    return None if value is None else float(value)


class DenoisingTask(SeededStream):
    """What every denoising task shares: noise, loss, PSNR per image and layer, the report.

    A subclass reads its images and calls :meth:`_set_images`; it supplies ``train_batches``,
    ``model_kwargs``, ``steps_per_epoch``, ``samples_per_epoch`` and :meth:`data_conventions`.
    ``model_kwargs`` gives a model ``input_sizes``: {where: (H, W)} for every size of input the model
    will see (training, validation, test), ``where`` naming the data key or file it comes from,
    training first, so that a model refuses before any work an input it cannot take (filters larger
    than an image, a dense dictionary given images of another size), naming both.
    ``val_size`` held-out training images validate with noise fixed at ``sigma``; 0 validates on the
    test images at ``sigma`` (the papers' per-epoch test curves), which must then be the first of
    ``test_sigmas`` since the monitor is ``test/psnr``. Training noise draws from one generator
    seeded by ``seed``, on the device. Layer 0 of the per-layer table is the noisy input.
    """

    kind = "denoising"
    model_protocol: dict[str, str] = {}
    monitor_mode = "max"
    primary_metric = METRIC
    eval_batch_size = 1

    def __init__(self, sigma: float, test_sigmas: Sequence[float], test_seed: int, batch_size: int,
                 val_size: int, psnr_peak: str | float, clamp: bool, n_figures: int, seed: int,
                 device: str | torch.device, loss_reduction: str = "sum"):
        self.sigma, self.test_sigmas = float(sigma), [float(s) for s in test_sigmas]
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"data.loss_reduction={loss_reduction!r}: expected one of {', '.join(LOSS_REDUCTIONS)}")
        self.loss_reduction = loss_reduction
        self.test_seed = int(test_seed)
        self.batch_size = int(batch_size)
        self.peak, self.clamp, self.n_figures = psnr_peak, bool(clamp), int(n_figures)
        self.monitor = "val/psnr" if val_size else METRIC
        if self.monitor == METRIC and self.sigma not in self.test_sigmas:
            raise ValueError(f"data.val_size=0 validates on the test images at data.sigma={sigma:g} as "
                             f"test/psnr, but data.test_sigmas={self.test_sigmas} lacks it: add {sigma:g} "
                             "there, or set data.val_size > 0")
        # the noise level of test/psnr, the figures and the published table: the training sigma when
        # the test images validate (val_size=0), else the first test sigma
        self.headline_sigma = self.sigma if self.monitor == METRIC else self.test_sigmas[0]
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(int(seed))

    def _set_images(self, test_names: list[str], test_clean: list[torch.Tensor],
                    val_clean: list[torch.Tensor]) -> None:
        """The (H, W) test images, with their fixed noise at every test sigma, and the validation set:
        ``val_clean`` with noise fixed at sigma, or the test images at sigma when it is empty."""
        self.test_names, self.test_clean = test_names, test_clean
        if self.peak == "max":  # the PSNR's peak is each clean image's maximum
            black = [name for name, image in zip(test_names, test_clean) if not float(image.max()) > 0]
            if black:
                raise ConfigError(f"test image {black[0]} is all black: its PSNR with data.psnr_peak=max (the clean "
                                  "image's maximum) is undefined; set data.psnr_peak=1.0 or remove the image")
        self.test_noisy = {s: fixed_noisy(self.test_clean, s, self.test_seed) for s in self.test_sigmas}
        if val_clean:
            self.val_set = val_clean, fixed_noisy(val_clean, self.sigma, self.test_seed, VAL_SPLIT)
        else:
            self.val_set = self.test_clean, self.test_noisy[self.sigma]

    def data_conventions(self) -> str:
        """How the images are read and the training batches drawn, for results.md."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def loss(self, outputs: list[torch.Tensor], batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """0.5 * (clean - last estimate)^2 (supervised: the target is the clean image), plus
        ``model.loss_penalty(per_position)`` when the model has one (its gradient mode's penalty, e.g.
        lam * ||z_T||_1), scaled by ``data.loss_reduction``:

        * ``sum``: summed over the pixels, mean over the batch (PUDLE's ``DLLoss2D``, ``src/utils/loss.py``,
          as ``src/train_conv_denoise.py`` uses it); the penalty summed over the code, mean over the batch.
        * ``pixel_mean``: summed over the channels, mean over the batch and the pixels; the penalty
          summed over the code's channels, mean over the batch and the code's positions
          (``per_position``). This is PUDLE's ``SparseLoss`` (``0.5 * (x - xhat).pow(2).sum(dim=1).mean()``
          and ``zhat.abs().sum(dim=1).mean()``, written for vectors) on (N, C, H, W) images, the loss
          whose values the authors' committed logs of the denoising table hold (docs/experiments.md).

        The two differ by the number of pixels P (16641 in a 129x129 crop). Adam undoes a constant
        scale of the gradient except through its eps (a scale 1/P acts as eps -> eps * P): with the
        recipe's eps 1e-3, ``pixel_mean`` takes the smaller steps.
        """
        squared = (batch[1] - outputs[-1].float()).pow(2)
        per_position = self.loss_reduction == "pixel_mean"
        loss = 0.5 * (squared.sum(dim=1).mean() if per_position else squared.flatten(1).sum(dim=1).mean())
        penalty = getattr(model, "loss_penalty", None)
        extra = penalty(per_position=per_position) if penalty is not None else None
        return loss if extra is None else loss + extra

    # ------------------------------------------------------------------ evaluation
    def _chunks(self, clean: list[torch.Tensor]) -> Iterator[slice]:
        """Runs of consecutive images of one size, at most ``eval_batch_size`` long."""
        start = 0
        while start < len(clean):
            stop = start + 1
            while (stop < len(clean) and stop - start < self.eval_batch_size
                   and clean[stop].shape == clean[start].shape):
                stop += 1
            yield slice(start, stop)
            start = stop

    @torch.no_grad()
    def _scores(self, model: torch.nn.Module, clean: list[torch.Tensor], noisy: list[torch.Tensor],
                depth: int | None = None, keep: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """PSNR (dB) of every image (rows) at layer 0 (the noisy input, scored like an estimate) and
        after each layer up to ``depth`` (columns), in eval mode, ``eval_batch_size`` images of one
        size at a time; and the final estimates of the first ``keep`` images."""
        was_training = model.training
        model.eval()
        rows, kept = [], []
        try:
            for part in self._chunks(clean):
                x, y = torch.stack(clean[part]).unsqueeze(1), torch.stack(noisy[part]).unsqueeze(1)
                estimates = torch.stack([y] + [e.float() for e in model(y, depth)], dim=1)  # (b, L+1, 1, H, W)
                target = x.unsqueeze(1).expand_as(estimates)
                rows.append(psnr_db(estimates.flatten(0, 1), target.flatten(0, 1), self.peak, self.clamp)
                            .view(len(x), -1))
                kept += list(estimates[:max(0, keep - part.start), -1, 0])
        finally:
            model.train(was_training)
        return torch.cat(rows).cpu(), kept

    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        """The mean PSNR (dB) over the validation images (the test images if val_size=0) at sigma."""
        scores, _ = self._scores(model, *self.val_set, depth)
        return {self.monitor: scores[:, -1].mean().item()}

    def test_pairs(self) -> list[Batch]:
        """The test images with their noise at the headline sigma and their clean versions, (b, 1, H, W)
        batches of one size (for ``+diagnostics=robustness``)."""
        noisy = self.test_noisy[self.headline_sigma]
        return [(torch.stack(noisy[part]).unsqueeze(1), torch.stack(self.test_clean[part]).unsqueeze(1))
                for part in self._chunks(self.test_clean)]

    def reconstruction_scores(self, estimate: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``psnr``: the mean PSNR (dB) of the estimates against the clean images (test/psnr's convention)."""
        return {"psnr": psnr_db(estimate.float(), target, self.peak, self.clamp).mean().item()}

    def evaluate(self, model: torch.nn.Module) -> tuple[pd.DataFrame, pd.DataFrame, list]:
        """Every test image at every test sigma: one row per image and sigma (input and final PSNR),
        the mean PSNR per layer and sigma (layer 0 = the noisy input), and the figure's panels of the
        first ``n_figures`` images at the headline sigma."""
        items, layers, panels = [], {}, []
        for s in self.test_sigmas:
            keep = self.n_figures if s == self.headline_sigma else 0
            scores, kept = self._scores(model, self.test_clean, self.test_noisy[s], keep=keep)
            items.append(pd.DataFrame({"image": self.test_names, "sigma": s,
                                       "psnr_input": scores[:, 0].numpy(), "psnr": scores[:, -1].numpy()}))
            layers[sigma_metric(s)] = scores.mean(dim=0).numpy()
            panels += [self._panel(i, s, scores[i], estimate) for i, estimate in enumerate(kept)]
        depth = len(layers[sigma_metric(self.headline_sigma)])
        return pd.concat(items, ignore_index=True), pd.DataFrame({"layer": range(depth), **layers}), panels

    def _panel(self, i: int, sigma: float, scores: torch.Tensor, estimate: torch.Tensor) -> list:
        """Test image i at ``sigma``: noisy, denoised and clean, titled with their PSNR and name; at
        sigma 0 (a reconstruction) the input, which is the clean image, and its reconstruction."""
        if sigma == 0:
            return [(f"input: {self.test_names[i]}", self.test_clean[i]),
                    (f"reconstruction, {scores[-1]:.2f} dB", estimate)]
        return [(f"noisy (sigma {sigma:g}), {scores[0]:.2f} dB", self.test_noisy[sigma][i]),
                (f"denoised, {scores[-1]:.2f} dB", estimate),
                (f"clean: {self.test_names[i]}", self.test_clean[i])]

    @staticmethod
    def per_sigma(items: pd.DataFrame) -> pd.DataFrame:
        """Per test sigma: the mean PSNR of the noisy input and of the estimate, the estimate's std over
        images (ddof 0, as numpy and the authors' ``np.std``), and the number of images."""
        return items.groupby("sigma", sort=False).agg(
            psnr_input=("psnr_input", "mean"), psnr=("psnr", "mean"),
            psnr_std=("psnr", lambda v: v.std(ddof=0)), images=("psnr", "size")).reset_index()

    def summary(self, table: pd.DataFrame) -> dict[str, float]:
        """The flat metrics of :meth:`per_sigma`'s table: test/psnr_s{sigma} and its _std for each
        sigma; the headline sigma's also as test/psnr, test/psnr_std and, when it is not 0,
        test/psnr_input (at sigma 0 the input is the clean image: no input PSNR is reported)."""
        first = table[table["sigma"] == self.headline_sigma].iloc[0]
        metrics = {METRIC: first["psnr"], f"{METRIC}_std": first["psnr_std"]}
        if self.headline_sigma > 0:
            metrics[f"{METRIC}_input"] = first["psnr_input"]
        for row in table.itertuples():
            metrics[sigma_metric(row.sigma)], metrics[f"{sigma_metric(row.sigma)}_std"] = row.psnr, row.psnr_std
        return {k: float(v) for k, v in metrics.items()}

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None, history: list[dict]) -> Report:
        """Test PSNR per sigma (mean, std over images) and of the noisy input, the final validation
        PSNR, the published value when the paper config has one; layers.csv, items.csv and the
        figures, and what :meth:`interpretation` adds."""
        items, layers, panels = self.evaluate(model)
        table = self.per_sigma(items)
        metrics = self.summary(table)
        if self.monitor != METRIC:  # with val_size=0 the validation value is test/psnr itself
            metrics.update(self.validate(model))
        variant = paper_variant(paper, model_name)
        value = published_psnr(paper, self.setting(), variant)
        others = references(paper, lambda node: published_psnr(node, self.setting(), variant))
        published = None if value is None and not others else Published(
            METRIC, value, paper.get("source"), f"{self.setting()}, {variant}", others)
        title = f"{model_title(model_name, model)}, {self.setting()}, {self.test_protocol()}"
        extra, plots, lines = self.interpretation(model, model_name)
        metrics.update(extra)
        tables = {
            "sigmas": Table(table, None, "PSNR (dB) per noise level (test images: mean, std over images)"),
            "layers.csv": Table(layers, ["layer"], "PSNR (dB) per layer (mean over test images; layer 0 = the "
                                "noisy input)"),
            "items.csv": Table(items, ["image", "sigma"])}
        # the per-epoch test PSNR of val_size=0 is the papers' curve: shown beside the training loss
        return Report(title, metrics, tables, {**self.figures_of(model, model_name, title, layers, panels), **plots},
                      notes=["Conventions: " + self.conventions(), *lines], published=published,
                      protocol=f"test metrics on {self.test_protocol()}",
                      curve=("step", False), curve_names={METRIC: "val/psnr (test images)"})

    def interpretation(self, model: torch.nn.Module, model_name: str) -> tuple[dict, dict, list[str]]:
        """Further metrics, figures and results.md paragraphs that explain the trained model; none here."""
        return {}, {}, []

    def figures_of(self, model: torch.nn.Module, model_name: str, title: str, layers: pd.DataFrame,
                   panels: list) -> dict:
        """PSNR per layer, noisy / denoised / clean test images, and the model's components of them
        (the run draws the dictionary)."""
        plots = {"psnr_per_layer.png": figures.per_layer_figure(layers, "layer", "PSNR (dB)", title)}
        if panels:
            plots["denoised.png"] = figures.image_rows_figure(panels, title)
        return {**plots, **self.components_figure(model, title)}

    @torch.no_grad()
    def components_figure(self, model: torch.nn.Module, title: str) -> dict:
        """``components.png`` for a model that declares ``components(y)``, the named parts its estimate
        of images y is the sum of (DenSaE's ``A x`` and ``B u``): the first ``n_figures`` noisy test
        images at the headline sigma, each beside its parts, every panel scaled to its own range."""
        split = getattr(model, "components", None)
        if not callable(split) or not self.n_figures:
            return {}
        was_training = model.training
        model.eval()
        try:
            rows = []
            for i, noisy in enumerate(self.test_noisy[self.headline_sigma][:self.n_figures]):
                parts = split(noisy[None, None])
                if not parts:
                    return {}
                rows.append([(f"input: {self.test_names[i]}", noisy)] + [
                    (f"{name} [{part.min():.2f}, {part.max():.2f}]", figures.unit_range(part[0])[0])
                    for name, part in parts.items()])
        finally:
            model.train(was_training)
        names = " and ".join(parts)
        return {"components.png": figures.image_rows_figure(rows, f"{title}: {names}, each scaled to its range")}

    def conventions(self) -> str:
        """How the numbers were computed, for results.md."""
        peak = "the clean image's maximum (the authors' code)" if self.peak == "max" else f"{self.peak:g}"
        clamp = "clamped to [0, 1] first" if self.clamp else "not clamped"
        validation = ("the test images at sigma" if self.monitor == METRIC
                      else f"{len(self.val_set[0])} held-out training images at sigma {self.sigma:g}")
        return (f"PSNR per image = 20 log10(peak) - 10 log10(MSE), peak = {peak}, estimates {clamp} "
                "(layer 0, the noisy input, too); then the mean and std over images. Noise sigma/255 * "
                f"N(0, 1), not clipped; test noise fixed by test_seed={self.test_seed}. Training noise "
                f"sigma {self.sigma:g}; validation on {validation}. Training loss: "
                f"{LOSS_REDUCTIONS[self.loss_reduction]} (data.loss_reduction={self.loss_reduction}). "
                + self.data_conventions())

    def metric_names(self) -> list[str]:
        """The metrics a run of this task reports (``published/...`` besides, when a paper has them)."""
        names = [METRIC, f"{METRIC}_std"] + [f"{METRIC}_input"] * (self.headline_sigma > 0)
        names += [name for s in self.test_sigmas for name in (sigma_metric(s), f"{sigma_metric(s)}_std")]
        return names if self.monitor == METRIC else [*names, self.monitor]

    def artifacts(self) -> dict:
        """Nothing beyond the image files defines the problem."""
        return {}

    def test_protocol(self) -> str:
        """What the test metrics are measured on (results.md's title and headline table)."""
        return f"{len(self.test_clean)} full test images"

    def setting(self) -> str:
        """The published-table key: the headline noise level (sigma25)."""
        return f"sigma{self.headline_sigma:g}"


class ImageDenoising(DenoisingTask):
    """Denoising on image folders (PUDLE's BSD protocol): random crops per step, full test images.

    An epoch visits every training image once in a fresh random order, one random crop each, in
    ``ceil(n / batch_size)`` batches (the last one smaller); ``steps_per_epoch`` instead draws that many
    full batches from consecutive fresh orders. ``n_train`` / ``n_test`` keep the first files in
    sorted order; ``val_size`` holds out the last ``val_size`` training files (in sorted order, the
    same for every seed) as full validation images. Crops and flips draw from the task's generator.
    """

    def __init__(self, train_dir: str, test_dir: str, crop: int = 129, hflip: bool = True, vflip: bool = True,
                 sigma: float = 25.0, test_sigmas: Sequence[float] = (25.0,), test_seed: int = 0,
                 batch_size: int = 1, steps_per_epoch: int | None = None, n_train: int | None = None,
                 n_test: int | None = None, val_size: int = 0, psnr_peak: str | float = "max",
                 clamp: bool = True, n_figures: int = 3, test_crop: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", trainer: DictConfig | None = None,
                 loss_reduction: str = "sum"):
        super().__init__(sigma, test_sigmas, test_seed, batch_size, val_size, psnr_peak, clamp, n_figures,
                         seed, device, loss_reduction)
        self.crop, self.hflip, self.vflip = int(crop), bool(hflip), bool(vflip)
        self.test_crop = test_crop
        train_files, val_files, test_files = self._files(train_dir, test_dir, n_train, n_test, val_size)
        self.data_source = (f"training images from {Path(train_dir).expanduser().resolve()}, "
                            f"test images from {Path(test_dir).expanduser().resolve()}")
        self.train_images = [pad_to(image, self.crop) for image in self._load(train_files)]
        val_images = self._load(val_files)
        self._set_images([f.relative_to(Path(test_dir).expanduser()).as_posix() for f in test_files],
                         self._test_windows(self._load(test_files)), val_images)
        self.input_sizes = self._input_sizes(train_dir, test_dir, val_size, val_files, val_images)
        n = len(self.train_images)
        self.steps_per_epoch = steps_per_epoch or math.ceil(n / self.batch_size)
        self.samples_per_epoch = n if steps_per_epoch is None else steps_per_epoch * self.batch_size
        self.init_images = self._init_crops()

    @staticmethod
    def _files(train_dir: str, test_dir: str, n_train: int | None, n_test: int | None,
               val_size: int) -> tuple[list[Path], list[Path], list[Path]]:
        """(training, validation, test) files, checked before anything is loaded: the last
        ``val_size`` training files validate, the first ``n_train`` of the others train, the first
        ``n_test`` test files test (null: all)."""
        files, test_files = image_files(train_dir, "data.train_dir"), image_files(test_dir, "data.test_dir")
        if val_size + (n_train or 0) > len(files) or val_size >= len(files):
            raise ValueError(f"data.val_size={val_size} + data.n_train={n_train}: data.train_dir={train_dir} "
                             f"holds {len(files)} images (at least one must remain for training)")
        if n_test is not None and n_test > len(test_files):
            raise ValueError(f"data.n_test={n_test}: data.test_dir={test_dir} holds {len(test_files)} images")
        rest = files[:len(files) - val_size]
        return rest[:n_train], files[len(files) - val_size:], test_files[:n_test]

    @staticmethod
    def memory_estimate(data: DictConfig, trainer: DictConfig) -> dict[str, int]:
        """Bytes of a training batch (noisy, clean, noise; float32), of the initialisation crops and of
        a test window, clean and noisy at each test sigma (see :mod:`unroll_cli.memory`); the images
        themselves are bounded by the files."""
        pixels, windows = data.crop * data.crop, (data.test_crop or 0) ** 2
        return {"data.batch_size": 3 * 4 * data.batch_size * pixels, "data.crop": 4 * INIT_CROPS * pixels,
                "data.test_crop": 4 * (1 + len(data.test_sigmas)) * windows}

    def _load(self, files: list[Path]) -> list[torch.Tensor]:
        """The files as (H, W) gray tensors on the device (sizes differ: a list)."""
        return [load_gray(f).to(self.device) for f in files]

    def _input_sizes(self, train_dir: str, test_dir: str, val_size: int, val_files: list[Path],
                     val_images: list[torch.Tensor]) -> dict[str, tuple[int, int]]:
        """The training crops, the validation images and the test images (or windows), described by
        their data keys (:class:`DenoisingTask`)."""
        val_names = [f"validation image {f.relative_to(Path(train_dir).expanduser()).as_posix()} of "
                     f"data.train_dir={train_dir} (data.val_size={val_size})" for f in val_files]
        sizes = {f"the training crops (data.crop={self.crop})": (self.crop, self.crop),
                 **first_of_each_size(val_names, val_images)}
        if self.test_crop is not None:
            return {**sizes, f"the test windows (data.test_crop={self.test_crop})": (self.test_crop,) * 2}
        test_names = [f"test image {name} of data.test_dir={test_dir} (data.test_crop=null: whole images)"
                      for name in self.test_names]
        return {**sizes, **first_of_each_size(test_names, self.test_clean)}

    def test_protocol(self) -> str:
        """Full test images, or one fixed ``test_crop`` window of each (results.md says which)."""
        if self.test_crop is None:
            return super().test_protocol()
        return f"one {self.test_crop}x{self.test_crop} window of each of {len(self.test_clean)} test images"

    def _test_windows(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """The test images, or with ``test_crop`` one random ``test_crop`` x ``test_crop`` window of each
        (zero-padded when smaller), drawn with ``test_seed``: the same windows in every run. The authors'
        logging loader tests on random 129 crops (``RandomCrop(129)`` in ``train_conv_denoise.py``)."""
        if self.test_crop is None:
            return images
        gen = torch.Generator().manual_seed(self.test_seed)
        return [random_window(pad_to(image, self.test_crop), self.test_crop, gen) for image in images]

    def _init_crops(self) -> torch.Tensor:
        """(k, 1, crop, crop) clean crops of k = min(64, n) distinct training images, drawn with
        :data:`INIT_SEED` (the same for every run): data a model may initialise its dictionary from."""
        gen = torch.Generator().manual_seed(INIT_SEED)
        k = min(INIT_CROPS, len(self.train_images))
        picks = torch.randperm(len(self.train_images), generator=gen)[:k].tolist()
        return torch.stack([random_window(self.train_images[i], self.crop, gen) for i in picks]).unsqueeze(1)

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        """What a model needs from the data to be built: one (gray) channel, training crops, and the
        sizes of its inputs (``input_sizes``, :class:`DenoisingTask`)."""
        return {"in_channels": 1, "init_images": self.init_images, "input_sizes": self.input_sizes}

    def _epoch_order(self) -> list[int]:
        """The training images of one epoch: consecutive fresh random orders, cut to the epoch's size."""
        n = len(self.train_images)
        orders = [torch.randperm(n, generator=self.gen, device=self.device)
                  for _ in range(math.ceil(self.samples_per_epoch / n))]
        return torch.cat(orders)[:self.samples_per_epoch].tolist()  # one read-back per epoch

    def train_batches(self) -> Iterator[Batch]:
        """One epoch of (noisy, clean) batches: a random crop of each image, random flips, then fresh
        noise sigma/255 * N(0, 1), not clipped (PUDLE's training loader)."""
        order = self._epoch_order()
        for i in range(self.steps_per_epoch):
            picks = order[i * self.batch_size:(i + 1) * self.batch_size]
            clean = torch.stack([random_flips(random_window(self.train_images[j], self.crop, self.gen),
                                              self.hflip, self.vflip, self.gen) for j in picks]).unsqueeze(1)
            noise = torch.randn(clean.shape, generator=self.gen, device=self.device)
            yield clean + self.sigma / 255.0 * noise, clean

    def data_conventions(self) -> str:
        test = ("full test images" if self.test_crop is None else
                f"one random {self.test_crop}x{self.test_crop} window of each test image (fixed by test_seed)")
        return ('Gray = PIL\'s convert("L") (ITU-R 601-2 luma) / 255. Training: '
                f"{self.crop}x{self.crop} random crops, flips (h {self.hflip}, v {self.vflip}). Test: {test}.")
