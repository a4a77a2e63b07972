"""Folders of natural images for denoising (BSD68, CBSD432, or a user's own), read as gray tensors.

Images are read with PIL and converted to gray with PIL's ``convert("L")`` (ITU-R 601-2 luma,
L = 0.299 R + 0.587 G + 0.114 B, rounded to 8 bits; torchvision's ``Grayscale()`` calls the same
on PIL images, as the PUDLE and DenSaE loaders do), then scaled to [0, 1] float32. Random crops
and flips run on the device from the caller's generator, without reading anything back to the host.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: 16-bit and float images: PIL's convert("L") clips them to 255 instead of scaling them.
UNSUPPORTED_MODES = ("I", "F")
WHERE = ("BSD68 (test) and CBSD432 (training) images are in the PUDLE repository, "
         "github.com/btolooshams/stable-interpretable-unrolled-dl, folders data/BSD68 and data/CBSD432")


def image_files(folder: str | Path, key: str) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted by their path inside it; one ValueError
    naming the config ``key`` and the folder when it is missing or holds no image."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"{key}={folder}: no such folder. {WHERE}; set {key} to your copy "
                         "(or UNROLL_DATA to the folder that holds them)")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ValueError(f"{key}={folder}: no image file ({', '.join(s[1:] for s in SUFFIXES)}) in it "
                         f"or below. {WHERE}")
    return files


def load_gray(path: Path) -> torch.Tensor:
    """One image as a (H, W) float32 tensor in [0, 1] (PIL's "L" luma / 255); one ValueError naming
    the file when it is not a readable 8-bit image (truncated, not an image, 16-bit or float)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.split(";")[0] in UNSUPPORTED_MODES:
                raise ValueError(f"mode {image.mode} (16-bit or float): save it with 8 bits per channel")
            gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except Exception as error:  # PIL's own parsing: any error is an unreadable file
        reason = str(error).strip().splitlines()
        raise ValueError(f"{path}: not a readable image ({type(error).__name__}: "
                         f"{reason[0] if reason else ''})") from None
    return torch.from_numpy(gray)


def pad_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (H, W) image zero-padded at the bottom and right to at least ``size`` x ``size``."""
    h, w = image.shape
    return F.pad(image, (0, max(0, size - w), 0, max(0, size - h)))


def random_window(image: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` window of a (H, W) image at least that large, at a uniform position drawn
    from ``gen`` (row offset first), gathered by index tensors: no host synchronisation."""
    h, w = image.shape
    top = torch.randint(0, h - size + 1, (1,), generator=gen, device=gen.device).to(image.device)
    left = torch.randint(0, w - size + 1, (1,), generator=gen, device=gen.device).to(image.device)
    steps = torch.arange(size, device=image.device)
    return image[(top + steps)[:, None], (left + steps)[None, :]]


def random_flips(window: torch.Tensor, hflip: bool, vflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Mirror left-right (``hflip``), then up-down (``vflip``), each with probability 1/2 (one draw
    from ``gen`` per enabled flip, in that order), as RandomHorizontalFlip / RandomVerticalFlip."""
    for enabled, dim in ((hflip, -1), (vflip, -2)):
        if enabled:
            flip = torch.rand((), generator=gen, device=gen.device).to(window.device) < 0.5
            window = torch.where(flip, window.flip(dim), window)
    return window
