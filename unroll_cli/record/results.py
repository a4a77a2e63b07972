"""Per-layer evaluation of a trained model beside its baselines and the published curve.

Writes ``layers.csv`` (one row per unrolled layer, layer 0 being the all-zero start), the
``results.md`` table and the figures; returns the flat metrics for ``metrics.json``.
"""
from __future__ import annotations

import pandas as pd
import torch
from omegaconf import DictConfig

from unroll_cli.models.lista import FISTA, ISTA
from unroll_cli.record import figures
from unroll_cli.record.recorder import RunRecorder

BASELINES = {"ista": ISTA, "fista": FISTA}
METRIC = "test/nmse_db"


def published_curve(paper: DictConfig | None, setting: str, model_name: str) -> list[float] | None:
    """The paper's per-layer values for this setting and model, when the experiment has them."""
    if paper is None:
        return None
    curves = paper.get("nmse_db", {}).get(setting, {})
    values = curves.get(model_name)
    return None if values is None else [float(v) for v in values]


def evaluate_sparse_coding(cfg: DictConfig, model: torch.nn.Module, task, recorder: RunRecorder) -> dict:
    """Test metrics of the model and of ISTA/FISTA at the same depth and threshold; files."""
    metrics, per_layer = task.evaluate(model)
    depth = len(per_layer)
    layers = pd.DataFrame({"layer": range(depth), METRIC: per_layer})
    for name in cfg.eval.baselines:
        baseline = BASELINES[name](A=task.A, layers=model.layers, lam=model.lam)
        baseline_metrics, baseline_layers = task.evaluate(baseline, prefix=f"baseline/{name}/test")
        metrics.update(baseline_metrics)
        layers[f"baseline/{name}/{METRIC}"] = baseline_layers
    setting = task.setting()
    published = published_curve(cfg.paper, setting, cfg.model.name)
    if published is not None and len(published) >= depth:
        layers[f"published/{METRIC}"] = published[:depth]
        metrics[f"published/{METRIC}"] = published[depth - 1]
    recorder.write_table("layers.csv", layers)

    title = f"{cfg.model.name}, {task.A.shape[0]}x{task.A.shape[1]}, {setting}"
    recorder.write_figure("nmse_per_layer.png", figures.per_layer_figure(layers, "NMSE (dB)", title))
    learned = {"threshold": model.thresholds().tolist()}
    steps = model.step_sizes()
    if steps is not None:
        learned["step size"] = steps.tolist()
    recorder.write_figure("thresholds.png", figures.parameters_figure(learned, f"{cfg.model.name}: learned per layer"))
    if recorder.history:
        history = pd.DataFrame(recorder.history)
        recorder.write_figure("training_curve.png", figures.training_curves(history, "step", cfg.model.name))
    recorder.write_text("results.md", results_markdown(cfg, metrics, layers, title))
    return metrics


def results_markdown(cfg: DictConfig, metrics: dict, layers: pd.DataFrame, title: str) -> str:
    """The human-readable table of one run: headline metrics, then NMSE per layer."""
    headline = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
    lines = [f"# {title}", "", headline.to_markdown(index=False, floatfmt=".4g"), "",
             "## NMSE (dB) per layer (test set, layer 0 = the all-zero start)", ""]
    table = layers.copy()
    published = f"published/{METRIC}"
    if published in table:
        table["difference"] = table[METRIC] - table[published]
    lines += [table.to_markdown(index=False, floatfmt=[".0f"] + [".2f"] * (table.shape[1] - 1)), ""]
    if cfg.paper is not None:
        lines += [f"Published values: {cfg.paper.source} (reading error +-{cfg.paper.tolerance_db} dB).", ""]
    lines += [f"NMSE convention: {cfg.eval.nmse}; baselines run at the model's depth and lam.", ""]
    return "\n".join(lines)
