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
    """Test metrics of the model and of ISTA/FISTA at the same depth and threshold; files.
    The final validation NMSE is kept too: it is what a hyper-parameter search should select on."""
    metrics, per_layer = task.evaluate(model)
    metrics.update(task.validate(model))
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
    recorder.write_figure("nmse_per_layer.png", figures.per_layer_figure(layers, "layer", "NMSE (dB)", title))
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


def accuracy_summary(history: list[dict], monitor: str, final: float, epochs: list[int] | None) -> dict:
    """Best and windowed-mean accuracy over the per-epoch evaluations (Sulam et al.'s notebooks print
    the mean over epochs 81-99 / 141-149, ``np.mean(acc[-20:-1])``); default window: the last 10."""
    per_epoch = [row[monitor] for row in history if monitor in row]
    if not per_epoch:
        return {"acc_best": final, "acc_last_k_mean": final}
    first, last = epochs if epochs is not None else (max(1, len(per_epoch) - 9), len(per_epoch))
    window = per_epoch[first - 1:last]
    return {"acc_best": max(per_epoch), "acc_last_k_mean": sum(window) / len(window)}


def evaluate_classification(cfg: DictConfig, model: torch.nn.Module, task, recorder: RunRecorder) -> dict:
    """Final, best and windowed-mean test accuracy; accuracy per number of unfoldings T' = 0..T."""
    final = task.evaluate(model)
    metrics = {"test/acc": final["acc"], "test/loss": final["loss"]}
    summary = accuracy_summary(recorder.history, task.monitor, final["acc"], cfg.eval.acc_mean_epochs)
    if task.monitor.startswith("test/"):  # per-epoch test accuracy, the paper's protocol
        metrics.update({f"test/{k}": v for k, v in summary.items()})
    else:
        metrics.update({f"val/{k}": v for k, v in summary.items()})
    depth = model.unfoldings
    layers = pd.DataFrame({"unfoldings": range(depth + 1),
                           "test/acc": [task.evaluate(model, t)["acc"] for t in range(depth + 1)]})
    published = None
    if cfg.paper is not None:
        published = cfg.paper.get("acc", {}).get(task.setting(), {}).get(cfg.model.name)
    if published is not None:
        metrics[cfg.paper.metric.replace("test/", "published/test/")] = float(published)
    recorder.write_table("layers.csv", layers)

    title = f"{cfg.model.name} on {task.setting()}, T={depth}"
    recorder.write_figure("acc_per_unfolding.png",
                          figures.per_layer_figure(layers, "unfoldings", "test accuracy (%)", title))
    recorder.write_figure("filters.png", figures.atoms_figure(model.dictionary(), f"{cfg.model.name}: first-layer filters"))
    if recorder.history:
        recorder.write_figure("training_curve.png",
                              figures.training_curves(pd.DataFrame(recorder.history), "epoch", cfg.model.name))
    headline = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
    lines = [f"# {title}", "", headline.to_markdown(index=False, floatfmt=".4g"), ""]
    if published is not None:
        reported = metrics[cfg.paper.metric]
        lines += [f"Published {cfg.paper.metric}: {published:.2f} ({cfg.paper.source}); "
                  f"this run: {reported:.2f}, difference {reported - published:+.2f}.", ""]
    lines += ["## Test accuracy per number of unfoldings at test time", "",
              layers.to_markdown(index=False, floatfmt=[".0f", ".2f"]), ""]
    recorder.write_text("results.md", "\n".join(lines))
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
