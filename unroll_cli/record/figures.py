"""The run's figures: a metric per unrolled layer, learned thresholds/steps, training curves, images.

Every figure is titled with :func:`fig.suptitle <matplotlib.figure.Figure.suptitle>` and laid out by
matplotlib's constrained layout when it is saved, so that :func:`with_overrides` can add the run's
overrides under any title; metric keys are shown as their labels (:mod:`unroll_cli.record.labels`), and
an axis of layers, epochs or steps has integer ticks.
"""
from __future__ import annotations

import math
from typing import Iterable

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from unroll_cli.evaluate.representer import top_contributors  # noqa: E402
from unroll_cli.record.labels import metric_label, overrides_line  # noqa: E402

TITLE_SIZE = 10
CHARS_PER_INCH = 11  # characters of a title line at TITLE_SIZE per inch of the figure's width


def figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (6, 4)):
    """A figure and its (rows, cols) axes, laid out when saved (titles added later find room)."""
    return plt.subplots(rows, cols, figsize=figsize, squeeze=False, layout="constrained")


def with_overrides(fig, overrides: Iterable[str]):
    """``fig`` with the run's overrides (:func:`unroll_cli.record.labels.overrides_line`, wrapped to the
    figure's width) as the last lines of its title; unchanged when there are none."""
    line = overrides_line(overrides, width=max(30, int(fig.get_figwidth() * CHARS_PER_INCH)))
    if line:
        title = fig.get_suptitle()
        fig.suptitle(f"{title}\n{line}" if title else line, fontsize=TITLE_SIZE)
        if fig.get_layout_engine() is None:  # a figure laid out once by tight_layout
            fig.set_layout_engine("constrained")
    return fig


def integer_ticks(ax) -> None:
    """Ticks of the x axis (layers, unfoldings, epochs, steps) at whole numbers only."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def per_layer_figure(layers: pd.DataFrame, x: str, ylabel: str, title: str):
    """Every column but ``x`` as one curve against ``x`` (the layer index; dashed: published), its
    legend the columns' labels."""
    fig, axes = figure()
    ax = axes[0, 0]
    for column in layers.columns.drop(x):
        style = "--" if column.startswith("published") else "-"
        ax.plot(layers[x], layers[column], style, marker="o", markersize=3, label=metric_label(column))
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def parameters_figure(curves: dict[str, list[float]], title: str):
    """Learned per-layer scalars (thresholds, step sizes), one panel each."""
    fig, axes = figure(1, len(curves), (4 * len(curves), 3.5))
    for ax, (name, values) in zip(axes[0], curves.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3)
        ax.set_xlabel("layer")
        ax.set_ylabel(name)
        integer_ticks(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def training_curves(history: pd.DataFrame, x: str, title: str, log: bool = False):
    """Each numeric ``train/`` or ``val/`` column of the history against ``x`` (``log``: on a log
    scale, for values that span decades), each axis named by the column's label."""
    columns = [c for c in history.columns if c.startswith(("train/", "val/"))]
    fig, axes = figure(1, max(1, len(columns)), (4 * max(1, len(columns)), 3.5))
    for ax, column in zip(axes[0], columns):
        (ax.semilogy if log else ax.plot)(history[x], history[column], marker=".")
        ax.set_xlabel(x)
        ax.set_ylabel(metric_label(column))
        integer_ticks(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """Each image (along the first dimension) scaled to [0, 1] by its own minimum and maximum."""
    images = images.detach().float().cpu()
    flat = images.flatten(1)
    shape = (-1,) + (1,) * (images.dim() - 1)
    lo, hi = flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)
    return (images - lo) / (hi - lo).clamp_min(1e-12)


def atoms_figure(filters: torch.Tensor, title: str, max_atoms: int = 64):
    """Dictionary atoms / first-layer filters (atoms, channels, h, w) as a grid of images, each
    scaled to its own range; one or three channels (grey or colour)."""
    atoms = unit_range(filters[:max_atoms]).permute(0, 2, 3, 1).numpy()
    cols = int(math.ceil(math.sqrt(len(atoms))))
    rows = int(math.ceil(len(atoms) / cols))
    fig, axes = figure(rows, cols, (max(4.0, cols * 0.8), rows * 0.8 + 0.6))
    for ax in axes.flat:
        ax.axis("off")
    for ax, atom in zip(axes.flat, atoms):
        ax.imshow(atom.squeeze(-1) if atom.shape[-1] == 1 else atom, cmap="gray", interpolation="nearest")
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def image_rows_figure(rows: list[list[tuple[str, torch.Tensor]]], title: str):
    """Gray images in [0, 1] (each (H, W), shown without rescaling), one row per list, each panel
    with its own title (e.g. noisy / denoised / clean with their PSNR)."""
    cols = max(len(row) for row in rows)
    fig, axes = figure(len(rows), cols, (3.2 * cols, 2.6 * len(rows) + 0.6))
    for ax in axes.flat:
        ax.axis("off")
    for ax_row, row in zip(axes, rows):
        for ax, (label, image) in zip(ax_row, row):
            ax.imshow(image.detach().float().cpu().clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def representer_figure(rows: list[list[tuple[str, torch.Tensor]]], train_images: torch.Tensor,
                       weights: torch.Tensor, k: int, title: str):
    """One row per entry of ``rows`` (its labelled (H, W) images first, e.g. an atom), then the k
    training images (n, H, W) with the largest |weight| in that row of ``weights`` (rows, n), each image
    scaled to its own range, its index and weight in the title."""
    train = unit_range(train_images)
    panels = []
    for lead, row in zip(rows, weights):
        indices, values = top_contributors(row, k)
        panels.append([(label, unit_range(image[None])[0]) for label, image in lead]
                      + [(f"#{i}: {v:.3g}", train[i]) for i, v in zip(indices.tolist(), values.tolist())])
    return image_rows_figure(panels, title)
