"""Words for people: a metric key as a label (figures' axes and legends, results.md's headers), and
the titles of a run's figures (the model, its operator, the run's overrides).

One map for every task: a key is read from its parts, not looked up whole. A key is TensorBoard's
slash style, ``[baseline/<name>/ | published/]<split>/<metric>[_<suffix>...]`` (``test/nmse_db``,
``baseline/ista/test/nmse_db``, ``test/psnr_s25_std``, ``val/acc``); the split may be left out
(``psnr_input``, a column of a table) and a note in parentheses after the key is kept
(``val/psnr (test images)``). A key with a part this module does not know is its own label.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Iterable

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

SPLITS = {"train": "training", "val": "validation", "test": "test", "factorize": "factorization"}
# metric -> (name, unit)
METRICS = {"nmse_db": ("NMSE", "dB"), "psnr": ("PSNR", "dB"), "acc": ("accuracy", "%"), "loss": ("loss", ""),
           "rmse": ("RMSE", ""), "seconds": ("time", "s"), "grad_norm": ("gradient norm", ""),
           "support_precision": ("support precision", ""), "support_recall": ("support recall", ""),
           "support_f1": ("support F1", "")}
# suffixes of a metric: words after its name (before the unit), and qualifiers after the unit
AFTER_NAME = {"std": "std", "input": "of the input"}
QUALIFIERS = {"best": "best epoch", "last_k_mean": "mean over the reported epochs", "adam": "Adam's best epoch"}
# one suffix and its underscore: a known one, or s<sigma>, the noise level of the denoising tasks (test/psnr_s25)
SUFFIX = re.compile(rf"(?:({'|'.join([*AFTER_NAME, *QUALIFIERS])})|s(\d+(?:\.\d+)?))(?:_|$)")
OVERRIDE_LINES = 2  # at most this many lines of overrides under a figure's title


def metric_label(key: str) -> str:
    """The human label of a metric key (module docstring): ``test/nmse_db`` -> ``test NMSE (dB)``,
    ``baseline/ista/test/nmse_db`` -> ``ISTA baseline: test NMSE (dB)``, ``test/psnr_s25`` ->
    ``test PSNR (dB), sigma 25``, ``val/acc`` -> ``validation accuracy (%)``,
    ``published/baseline/amp/test/nmse_db`` -> ``published AMP baseline: test NMSE (dB)``; ``key`` itself when
    a part of it is unknown."""
    base, note, rest = key.partition(" (")
    parts = base.split("/")
    if parts[0] == "baseline" and len(parts) > 2:
        prefix, parts = f"{parts[1].upper()} baseline: ", parts[2:]
    elif parts[0] == "published":  # the paper's value of the metric that follows
        inner = key.removeprefix("published/")
        return key if metric_label(inner) == inner else f"published {metric_label(inner)}"
    else:
        prefix = ""
    label = split_metric_label(*([None] + parts)[-2:]) if 1 <= len(parts) <= 2 else None
    return key if label is None else f"{prefix}{label}{note}{rest}"


def split_metric_label(split: str | None, metric: str) -> str | None:
    """``<split> <name> [std | of the input] (<unit>)[, <qualifiers>]``, or None when the split, the
    metric or one of its suffixes is unknown."""
    if split is not None and split not in SPLITS:
        return None
    name = next((m for m in sorted(METRICS, key=len, reverse=True) if metric == m or metric.startswith(m + "_")), None)
    if name is None:
        return None
    words, unit = METRICS[name]
    after, qualifiers = [], []
    suffix = metric[len(name) + 1:]
    while suffix:
        match = SUFFIX.match(suffix)
        if match is None:
            return None
        known, sigma = match.groups()
        if known in AFTER_NAME:
            after.append(AFTER_NAME[known])
        else:
            qualifiers.append(QUALIFIERS[known] if known else f"sigma {sigma}")
        suffix = suffix[match.end():]
    text = " ".join([*([SPLITS[split]] if split else []), words, *after])
    return text + (f" ({unit})" if unit else "") + "".join(f", {q}" for q in qualifiers)


def model_title(model_name: str, model=None) -> str:
    """The model's name, with its operator where the model has one (``model.operator``: dense,
    butterfly, monarch; a compressed model's too): ``lista, butterfly operator``."""
    operator = getattr(model, "operator", None)
    return f"{model_name}, {operator} operator" if isinstance(operator, str) else model_name


def swept_keys(run_dir: Path) -> set[str]:
    """The keys the sweep of ``run_dir`` varies, when it is a job of one: from the ``multirun.yaml`` Hydra
    writes in the sweep's directory above it, the command line's sweeps (``a,b``, ``range(3)``) and
    ``hydra.sweeper.params`` (a grid's, or an Optuna search's space); none when there is no readable one
    (the order of a title's overrides is all that depends on it)."""
    file = next((folder / "multirun.yaml" for folder in Path(run_dir).resolve().parents
                 if (folder / "multirun.yaml").is_file()), None)
    if file is None:
        return set()
    try:
        hydra = yaml.safe_load(file.read_text())["hydra"]
        params = [f"{key}={value}" for key, value in (hydra["sweeper"].get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides([*params, *hydra["overrides"]["task"]])
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError, HydraException):
        return set()
    return {override.key_or_group for override in parsed if override.is_sweep_override()}


def title_overrides(overrides: Iterable[str], run_dir: Path) -> list[str]:
    """The run's command-line overrides that tell it from the other runs of a sweep: all but Hydra's own
    (``hydra.*``) and paths (a value with a ``/``, ``resume``, ``data.root``, ``*_dir``, ``*_path``), those
    its sweep varies first (:func:`swept_keys`)."""
    shown = []
    for override in overrides:
        key, _, value = override.partition("=")
        name = key.lstrip("+~")
        last = name.rsplit(".", 1)[-1]
        if not (name == "hydra" or name.startswith(("hydra.", "hydra/")) or "/" in value or "\\" in value
                or last in ("resume", "root") or last.endswith(("_dir", "_path"))):
            shown.append(override)
    swept = swept_keys(run_dir) if shown else set()
    return sorted(shown, key=lambda override: override.partition("=")[0].lstrip("+~") not in swept)


def overrides_line(overrides: Iterable[str], width: int) -> str:
    """``overrides`` joined by spaces, wrapped at ``width`` characters, at most :data:`OVERRIDE_LINES`
    lines (cut with ``...`` beyond); empty when there is none."""
    return "\n".join(textwrap.wrap(" ".join(overrides), width=width, max_lines=OVERRIDE_LINES,
                                   placeholder=" ...", break_on_hyphens=False))
