"""Compress a trained run's dense maps into butterfly or Monarch layers: ``unroll-compress RUN_DIR``.

``unroll-compress RUN_DIR --structure butterfly|monarch [--out DIR] [--device auto|cpu|cuda] [--trust PKG]``
rebuilds the run's task and model with :mod:`unroll_cli.run`'s own functions from its config composed
again from its ``.hydra/overrides.yaml``, as ``unroll-eval`` does: checked as a command line's config is
(a run directory is data: its ``trusted_packages`` are not trusted; ``--trust PKG`` trusts your own
model's package) and refused when it differs from the config its checkpoint holds; it loads the weights the run reported (``best.pt`` when its trainer
reports the best validation epoch, else ``last.pt``: a layer-wise run, a run validated on its test
data, an unfinished run, whose status ``compress.md`` states), and makes the same model with ``operator=<structure>`` whose every learned dense map is a structured
layer at the projection of the trained matrix (the model's ``structured(operator)``; see
:mod:`unroll_cli.models.operators`). Both models are evaluated by the task's own ``report()``; ``DIR``
(default ``RUN_DIR/compressed_<structure>``) then holds:

* ``dense/`` and ``<structure>/``: each model's report (``results.md``, ``layers.csv``, figures);
* ``<structure>/model.pt``: the compressed model, ``{"model": state_dict, "config": the run's config
  with model.operator=<structure>}`` (its state dict loads into the model that config builds);
* ``compress.json``: the run, the checkpoint and its epoch, the run's status, the task's primary metric, each model's metrics
  and parameter counts (all trainable parameters, and those of the replaced maps), and per replaced
  map its shape, parameter counts and the projection's relative error ``||S - M||_F / ||M||_F``;
* ``compress.md``: the same as two tables.

The run directory's own files are never changed, and every file is written atomically. The dense
model is the one the run reported; on the same device its numbers are the run's own.

Exit code: 0 when both models were evaluated; 2 for bad input (a missing directory, a run without
``checkpoints/last.pt``, an unknown structure, a model that declares no structured form), one line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from unroll_cli.cli import output_folder
from unroll_cli.errors import ConfigError
from unroll_cli.models.operators import STRUCTURED
from unroll_cli.record.atomic import atomic_write, atomic_write_text
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.record.report import write_report
from unroll_cli.reevaluate import evaluation_config, read_source
from unroll_cli.run import SourceModel, build_model, build_task, load_weights, resolve_device, seed_everything
from unroll_cli.train.checkpoints import LINK


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser() -> argparse.ArgumentParser:
    """The command line; its description is the module docstring's summary and exit-code rule."""
    paragraphs = __doc__.strip().split("\n\n")
    parser = _Parser(prog="unroll-compress", description=f"{paragraphs[0]}\n\n{paragraphs[-1]}",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory of unroll-train")
    parser.add_argument("--structure", required=True, choices=sorted(STRUCTURED),
                        help="the structure of the compressed maps")
    parser.add_argument("--out", type=output_folder, default=None,
                        help="where the reports and compress.json/.md go (default: RUN_DIR/compressed_<structure>)")
    parser.add_argument("--trust", action="append", default=[], metavar="PACKAGE",
                        help="a package whose classes the run's config may name (your own model's); the "
                             "run directory's own trusted_packages are not trusted")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to evaluate (default: the run's device setting)")
    return parser


def run_status(run_dir: Path) -> str:
    """The run's status in its metrics.json (``unknown`` when it cannot be read)."""
    try:
        status = json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return "unknown"
    return status if isinstance(status, str) else "unknown"


def count(model, name: str | None = None) -> int:
    """Trainable parameters of ``model`` (as ``unroll-train`` counts them), or of its map ``name`` (the
    parameter of that name, or every parameter of the module of that name)."""
    return sum(p.numel() for key, p in model.named_parameters() if p.requires_grad
               and (name is None or key == name or key.startswith(f"{name}.")))


def replaced_maps(dense, compressed, structure: str) -> list[dict]:
    """Per map of ``dense.dense_maps()``: its shape, both parameter counts and the relative Frobenius
    error of the structured layer's matrix, computed in float64."""
    rows = []
    for name, matrix in dense.dense_maps().items():
        target = matrix.detach().double().cpu()
        approx = compressed.get_submodule(name).dense_matrix().detach().double().cpu()
        rows.append({"map": name, "shape": list(target.shape), "dense_params": count(dense, name),
                     f"{structure}_params": count(compressed, name),
                     "relative_error": float((approx - target).norm() / target.norm())})
    return rows


def save_model(file: Path, model, cfg, structure: str) -> None:
    """The compressed model's weights beside the config that builds it (``model.operator=<structure>``)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["model"]["operator"] = structure
    atomic_write(file, lambda tmp: torch.save({"model": model.state_dict(), "config": config}, tmp))


def evaluate(task, model, folder: Path, model_name: str, paper) -> dict[str, float]:
    """The task's own ``report()`` of ``model`` into ``folder`` (no metrics.json there: the folder is
    not a run, and ``unroll-report`` does not list it)."""
    model.eval()
    report = task.report(model, model_name, paper, [])
    return write_report(report, RunRecorder(folder, tensorboard=False), (paper or {}).get("note"))


def compress(run_dir: Path, structure: str, out: Path, device: str | None = None, trust: list[str] = ()) -> dict:
    """Compress the run's best model, each model's report into ``out`` (module doc); returns what
    ``compress.json`` holds. ``device`` None: the run's ``device`` setting. The run's stored config is
    checked as a command line's is, its ``_target_``s allowed only in the project and ``trust``."""
    run_overrides, last, best = read_source(run_dir)
    cfg = evaluation_config(run_overrides, [], last.get("config"), trust)
    name = cfg.model.name
    torch_device = resolve_device(device or cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    task = build_task(cfg, torch_device)
    dense = build_model(cfg.model, task, cfg)
    checkpoint, state = SourceModel(str(run_dir), last, best).reported(get_class(cfg.trainer._target_), task)
    load_weights(dense, state["model"], str(run_dir / LINK / checkpoint))
    dense.to(torch_device)
    if not (callable(getattr(dense, "dense_maps", None)) and callable(getattr(dense, "structured", None))):
        raise ConfigError(f"model={name} ({type(dense).__name__}) cannot be compressed: it declares no "
                          "dense_maps() and structured(operator) (see unroll_cli/models/operators.py)")
    try:
        compressed = dense.structured(structure)
    except ValueError as error:
        raise ConfigError(f"model={name}: {error}") from None

    paper = cfg.get("paper")
    models = {}
    for label, model in (("dense", dense), (structure, compressed)):
        metrics = evaluate(task, model, out / label, name, paper)
        models[label] = {"primary": metrics.get(task.primary_metric), "params": count(model), "metrics": metrics}
    save_model(out / structure / "model.pt", compressed, cfg, structure)
    maps = replaced_maps(dense, compressed, structure)
    for label in models:
        models[label]["map_params"] = sum(row[f"{label}_params"] for row in maps)
    return {"run": str(run_dir.resolve()), "checkpoint": f"{LINK}/{checkpoint}", "epoch": state.get("epoch"),
            "status": run_status(run_dir), "model": name, "structure": structure, "primary_metric": task.primary_metric,
            "models": models, "maps": maps}


def markdown(result: dict) -> str:
    """``compress.md``: the two models side by side, then the replaced maps."""
    labels, models = list(result["models"]), result["models"]
    summary = pd.DataFrame({"": [result["primary_metric"], "parameters", "parameters of the replaced maps"],
                            **{label: [models[label]["primary"], models[label]["params"], models[label]["map_params"]]
                               for label in labels}})
    epoch = "" if result["epoch"] is None else f" (epoch {result['epoch']})"
    if result["status"] != "completed":
        epoch += f"; the run is {result['status']}, not completed"
    return "\n".join([
        f"# {result['model']} compressed to {result['structure']}", "",
        f"Run: {result['run']}, {result['checkpoint']}{epoch}. Each model's report: {', '.join(f'{x}/' for x in labels)}.",
        "", summary.to_markdown(index=False, floatfmt=".4g"), "",
        "## Replaced maps (relative error: ||S - M||_F / ||M||_F of the projection)", "",
        pd.DataFrame(result["maps"]).to_markdown(index=False, floatfmt=".3g"), ""])


def main(argv: list[str] | None = None) -> int:
    """``unroll-compress``: writes the reports, compress.json and compress.md, prints compress.md;
    returns the exit code (module docstring)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / f"compressed_{args.structure}"
    try:
        result = compress(args.run_dir, args.structure, out, args.device, args.trust)
    except (ConfigError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    text = markdown(result)
    atomic_write_text(out / "compress.json", json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(out / "compress.md", text)
    print(text)
    print(f"results: {out}")
    return 0
