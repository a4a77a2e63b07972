"""Natural-image patches as Gregor & LeCun (ICML 2010, Sec. 4) describe them: ``size`` x ``size``
windows "randomly selected from the Berkeley image database", each with its mean removed and its
variance normalised, those of small standard deviation discarded.

The images are read gray (:func:`unroll_cli.data.image_folder.load_gray`, values in [0, 1]) and kept as
8-bit arrays. A patch is drawn from an image chosen uniformly, at a uniform position; its standard
deviation (over its pixels, numpy's ``std``, ddof 0) on that [0, 1] scale must exceed ``min_std``, and
it becomes ``(p - mean(p)) / std(p)`` flattened row by row (so ``||x||^2 = size^2``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from unroll_cli.data.image_folder import image_files, load_gray


def load_images(folder: str, key: str, count: int | None, size: int) -> list[torch.Tensor]:
    """The first ``count`` (all: None) images of ``folder`` in sorted order as (H, W) uint8 tensors; one
    ValueError naming ``key`` when there are fewer or one is smaller than a patch."""
    files = image_files(folder, key)
    if count is not None and count > len(files):
        raise ValueError(f"{key}={folder} holds {len(files)} images, fewer than the {count} asked for")
    images = []
    for path in files[:count]:
        gray = load_gray(path)
        if min(gray.shape) < size:
            raise ValueError(f"{path} is {gray.shape[0]}x{gray.shape[1]}, smaller than a {size}x{size} patch "
                             f"({key})")
        images.append((gray * 255).round().to(torch.uint8))
    return images


def normalize_patches(patches: torch.Tensor, min_std: float) -> torch.Tensor:
    """Rows of raw patches in [0, 1] (N, size^2) -> those whose std exceeds ``min_std``, each minus its
    mean and over its std (float64 while computing, float32 out)."""
    patches = patches.double()
    mean = patches.mean(dim=1, keepdim=True)
    std = patches.std(dim=1, unbiased=False, keepdim=True)
    keep = std.squeeze(1) > min_std
    return ((patches[keep] - mean[keep]) / std[keep]).float()


def draw_patches(images: list[torch.Tensor], count: int, size: int, min_std: float,
                 gen: torch.Generator, max_tries: int = 100) -> torch.Tensor:
    """``count`` normalised patches (count, size^2), drawn with ``gen`` (CPU) in rounds of ``count``
    candidates until enough pass ``min_std``; ValueError after ``max_tries`` rounds (flat images)."""
    found, have = [], 0
    for _ in range(max_tries):
        which = torch.randint(len(images), (count,), generator=gen)
        where = torch.rand(count, 2, generator=gen, dtype=torch.float64)
        raw = torch.empty(count, size * size)
        for i, (index, (u, v)) in enumerate(zip(which.tolist(), where.tolist())):
            image = images[index]
            top, left = int(u * (image.shape[0] - size + 1)), int(v * (image.shape[1] - size + 1))
            raw[i] = image[top:top + size, left:left + size].reshape(-1).float() / 255.0
        kept = normalize_patches(raw, min_std)
        found.append(kept)
        have += len(kept)
        if have >= count:
            return torch.cat(found)[:count]
    raise ValueError(f"fewer than {count} patches with a std above data.min_std={min_std:g} in {max_tries} "
                     "rounds: lower data.min_std")


def folder_name(folder: str) -> str:
    return str(Path(folder).expanduser().resolve())
