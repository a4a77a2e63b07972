"""Predicting the lasso's optimal code of natural-image patches (Gregor & LeCun, ICML 2010, Sec. 4,
Table 1): ``data=image_patches``.

The input is a normalised 10x10 patch X (:mod:`unroll_cli.data.patches`), the target its optimal code
``Z* = argmin 0.5 ||X - W_d Z||^2 + alpha ||Z||_1`` (``data.target=lasso_optimum``), computed to
convergence by CoD (:func:`unroll_cli.models.coordinate_descent.solve_lasso_cod`, float64). The
dictionary W_d (patch_size^2 x atoms, unit columns) is learned first by the paper's online procedure
(:func:`unroll_cli.data.lasso.learn_dictionary`) or read from ``data.dictionary_path``, and saved as
``dictionary.npy``. It is a sparse-coding task: a model sees ``A = W_d`` (``lista``, ``fista``,
``cod``, ``lcod``, the one-layer encoders), the training loss is the paper's eq. 5,
``0.5 ||Z* - Z||^2`` per patch averaged over the batch, and the metric is the mean per-patch squared
error ``||Z* - Z||^2`` of the last layer (``test/code_sq_error``; the paper does not say whether its
Table 1 halves it: ``test/code_half_sq_error`` is the halved one).

The report gives the error after every layer beside ISTA, FISTA and CoD at ``alpha`` up to
``data.baseline_iterations`` iterations, how many iterations of each reach the model's error
(``baseline/<name>/test/iterations_to_match``, the paper's "18 iterations of FISTA ..."), and Table 1
with the paper's values beside this run's. Iterations count as the paper's algorithms do (layer 1 is
the first shrinkage): LISTA (Algorithm 3), CoD and LCoD (Algorithms 2, 5) start from ``h(W_e X)``, so
their "k iterations" are layer k + 1; ISTA and FISTA (Algorithm 1) start from ``Z = 0``, so theirs are
layer k (the scale check: FISTA's first shrinkage gives the paper's "FISTA 1 iteration", about 21).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from unroll_cli.data.dictionary_learning import unit_columns
from unroll_cli.data.lasso import learn_dictionary
from unroll_cli.data.patches import draw_patches, folder_name, load_images
from unroll_cli.data.synthetic import load_matrix
from unroll_cli.models.coordinate_descent import CoordinateDescent, solve_lasso_cod
from unroll_cli.models.lista import FISTA, ISTA
from unroll_cli.record import figures
from unroll_cli.record.labels import model_title
from unroll_cli.record.report import Published, Report, Table
from unroll_cli.schema import SEED_RANGE, constrained, evaluation_only, positive, register_schema
from unroll_cli.tasks.base import SeededStream, online_epoch

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, torch.Tensor]  # (patches X, optimal codes Z*)
BASELINES = {"ista": ISTA, "fista": FISTA, "cod": CoordinateDescent}
#: the layers before a baseline's first iteration as the paper counts them (module docstring): CoD's
#: iterations are coordinate steps after h(W_e X), ISTA's and FISTA's shrinkages from Z = 0
LAYERS_BEFORE_FIRST_ITERATION = {"ista": 0, "fista": 0, "cod": 1}
METRIC, HALF = "test/code_sq_error", "test/code_half_sq_error"
MATCH = "test/iterations_to_match"
null_or_positive = lambda v: v is None or v > 0  # noqa: E731
#: patches evaluated at once (every layer of a 200-iteration baseline is kept for a chunk)
EVAL_CHUNK = 250
#: patches whose codes are solved at once (CoD runs until the slowest of them converges)
SOLVE_CHUNK = 1000
#: baseline iterations results.md shows beyond the model's layers (layers.csv has all)
SHOWN_ITERATIONS = (1, 2, 3, 5, 7, 10, 18, 20, 35, 50, 100, 200, 500, 1000)


@register_schema("data", "image_patches")
class ImagePatchesConfig:
    """Normalised natural-image patches and their lasso-optimal codes (Gregor & LeCun 2010, Sec. 4)."""

    _target_: str = "unroll_cli.tasks.patch_coding.PatchCoding"
    train_dir: str = "${oc.env:UNROLL_DATA,./data}/CBSD432"
    test_dir: str = evaluation_only("${oc.env:UNROLL_DATA,./data}/BSD68")
    n_images: Optional[int] = constrained(None, "null (every image) or an integer > 0", null_or_positive)
    n_test_images: Optional[int] = constrained(None, "null (every image) or an integer > 0", null_or_positive,
                                               evaluation=True)
    patch_size: int = constrained(10, "an integer > 0", positive)
    min_std: float = constrained(0.04, "a number >= 0 (pixels in [0, 1])", lambda v: v >= 0)
    atoms: int = constrained(100, "an integer > 0", positive)
    alpha: float = constrained(0.5, "a number > 0", positive)
    target: str = constrained("lasso_optimum", "lasso_optimum", lambda v: v == "lasso_optimum")
    tol: float = constrained(1e-6, "a number > 0", positive)  # CoD stops when no coordinate moves more
    max_cod_steps: int = constrained(100_000, "an integer > 0", positive)
    dictionary_path: Optional[str] = None  # a .npy (patch_size^2, atoms) dictionary; null: learn it
    dictionary_steps: int = constrained(2000, "an integer >= 0", lambda v: v >= 0)
    dictionary_batch: int = constrained(64, "an integer > 0", positive)
    dictionary_lr: float = constrained(0.1, "a number > 0", positive)
    dictionary_decay: float = constrained(100.0, "a number > 0 (steps)", positive)  # lr / (1 + t / decay)
    dictionary_seed: int = constrained(0, *SEED_RANGE)
    batch_size: int = constrained(16, "an integer > 0", positive)  # eq. 6 is per patch; a mean over a batch
    # null: fresh patches every step (the paper's online training, a CoD solve per step); N: a fixed pool of
    # N patches and their codes computed once (drawn by seed), batches drawn from it
    n_train: Optional[int] = constrained(None, "null (online) or an integer > 0", null_or_positive)
    n_val: int = constrained(1000, "an integer > 0", positive)
    n_test: int = constrained(1000, "an integer > 0", positive, evaluation=True)
    val_seed: int = constrained(1, *SEED_RANGE)
    test_seed: int = constrained(2, *SEED_RANGE, evaluation=True)
    baseline_iterations: int = constrained(200, "an integer >= 0", lambda v: v >= 0, changeable=True)
    baselines: List[str] = constrained(["ista", "fista", "cod"], "a list of ista, fista and/or cod",
                                       lambda v: set(v) <= set(BASELINES), changeable=True)


class PatchCoding(SeededStream):
    """Image patches -> their lasso-optimal codes (module docstring)."""

    kind = "sparse_coding"
    model_protocol: dict[str, str] = {"layers": "the number of layers of the per-layer table"}
    monitor, monitor_mode = "val/code_sq_error", "min"
    primary_metric = METRIC

    def __init__(self, train_dir: str, test_dir: str, n_images: int | None, n_test_images: int | None,
                 patch_size: int, min_std: float, atoms: int, alpha: float, target: str, tol: float,
                 max_cod_steps: int, dictionary_path: str | None, dictionary_steps: int, dictionary_batch: int,
                 dictionary_lr: float, dictionary_decay: float, dictionary_seed: int, batch_size: int,
                 n_train: int | None, n_val: int, n_test: int, val_seed: int, test_seed: int, baseline_iterations: int,
                 baselines: list[str], seed: int = 0, device: str | torch.device = "cpu",
                 trainer: DictConfig | None = None):
        self.device = torch.device(device)
        self.size, self.min_std, self.alpha = patch_size, min_std, alpha
        self.tol, self.max_cod_steps = tol, max_cod_steps
        self.batch_size, self.baseline_iterations, self.baselines = batch_size, baseline_iterations, list(baselines)
        dim = patch_size * patch_size
        if dictionary_path:
            W = load_matrix(dictionary_path, "data.dictionary_path", "the dictionary", dtype=torch.float64)
            if tuple(W.shape) != (dim, atoms):
                raise ValueError(f"data.dictionary_path: {dictionary_path} holds a {W.shape[0]}x{W.shape[1]} matrix, "
                                 f"not {dim}x{atoms} (data.patch_size^2 x data.atoms)")
        self.train_images = load_images(train_dir, "data.train_dir", n_images, patch_size)
        test_images = load_images(test_dir, "data.test_dir", n_test_images, patch_size)
        if not dictionary_path:
            gen = torch.Generator().manual_seed(dictionary_seed)
            W = learn_dictionary(lambda count: draw_patches(self.train_images, count, patch_size, min_std, gen),
                                 dim, atoms, alpha, dictionary_steps, dictionary_batch, dictionary_lr,
                                 dictionary_decay, gen, tol)
        self.W = unit_columns(W).float()  # the model's A and dictionary.npy; the targets use it in float64
        self.W64 = unit_columns(self.W.double()).to(self.device)
        self.A = self.W.to(self.device)
        self.val = self._fixed_set(self.train_images, n_val, val_seed)
        self.test = self._fixed_set(test_images, n_test, test_seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = online_epoch(trainer)
        self.train_set = None if n_train is None else self._fixed_set(self.train_images, n_train, seed + 1_000_003)
        where = (f"read from {Path(dictionary_path).expanduser().resolve()}" if dictionary_path else
                 f"learned in {dictionary_steps} steps of {dictionary_batch} patches (data.dictionary_seed="
                 f"{dictionary_seed})")
        training = "online" if n_train is None else f"a pool of {n_train}"
        self.data_source = (f"{patch_size}x{patch_size} patches of {folder_name(train_dir)} (training {training} "
                            f"drawn by seed={seed}, validation by data.val_seed={val_seed}) and of "
                            f"{folder_name(test_dir)} (test, data.test_seed={test_seed}); dictionary {dim}x{atoms} "
                            f"{where}")

    def _fixed_set(self, images: list[torch.Tensor], count: int, seed: int) -> Batch:
        x = draw_patches(images, count, self.size, self.min_std, torch.Generator().manual_seed(seed))
        return self._with_targets(x)

    def _with_targets(self, x: torch.Tensor) -> Batch:
        """Patches on the device with their optimal codes (float64 CoD to ``data.tol``, then float32)."""
        x = x.to(self.device)
        codes = []
        for part in x.split(SOLVE_CHUNK):
            z, steps = solve_lasso_cod(part.double(), self.W64, self.alpha, self.tol, self.max_cod_steps)
            if steps >= self.max_cod_steps:
                log.warning("CoD stopped at data.max_cod_steps=%d before data.tol=%g: the targets are not the "
                            "optimum to that tolerance (raise data.max_cod_steps)", self.max_cod_steps, self.tol)
            codes.append(z.float())
        return x, torch.cat(codes)

    @property
    def eval_batch_size(self) -> int:
        return max(len(self.val[0]), len(self.test[0]))

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        return {"A": self.A}

    def train_batches(self) -> Iterator[Batch]:
        """Fresh patches every step (the paper's "quasi infinite supply") with their optimal codes, or
        (``data.n_train``) a batch of the fixed pool drawn with replacement."""
        for _ in range(self.steps_per_epoch):
            if self.train_set is None:
                yield self._with_targets(draw_patches(self.train_images, self.batch_size, self.size, self.min_std,
                                                      self.gen))
            else:
                index = torch.randint(len(self.train_set[0]), (self.batch_size,), generator=self.gen)
                yield self.train_set[0][index.to(self.device)], self.train_set[1][index.to(self.device)]

    def loss(self, estimates: list[torch.Tensor], batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """Eq. 5: ``0.5 ||Z* - Z||^2`` per patch, the mean over the batch."""
        return 0.5 * (estimates[-1] - batch[1]).pow(2).sum(dim=1).mean()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        x, z = self.val
        return {self.monitor: (model(x, depth)[-1].float() - z).pow(2).sum(dim=1).mean().item()}

    @torch.no_grad()
    def per_layer(self, model: torch.nn.Module) -> list[float]:
        """The mean ``||Z* - Z_t||^2`` over the test patches after every layer t, layer 0 (Z = 0) first."""
        x, z = self.test
        sums = None
        for start in range(0, len(x), EVAL_CHUNK):
            target = z[start:start + EVAL_CHUNK]
            estimates = model(x[start:start + EVAL_CHUNK])
            errors = [target.pow(2).sum()] + [(e.float() - target).pow(2).sum() for e in estimates]
            sums = torch.stack(errors) if sums is None else sums + torch.stack(errors)
        return (sums / len(x)).tolist()

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None, history: list[dict]) -> Report:
        """The model's and the baselines' error per layer, the baselines' iterations to match the model,
        Table 1 beside the paper's (module docstring)."""
        per_layer = self.per_layer(model)
        error = per_layer[-1]
        metrics = {**self.validate(model), METRIC: error, HALF: error / 2}
        layers = pd.DataFrame({"layer": range(len(per_layer)), METRIC: per_layer})
        depth = max(len(per_layer), self.baseline_iterations + 2)
        layers = layers.reindex(range(depth)).assign(layer=range(depth))
        for name in self.baselines:
            curve = self.per_layer(BASELINES[name](A=self.A, layers=depth - 1, lam=self.alpha))
            layers[f"baseline/{name}/{METRIC}"] = curve
            metrics[f"baseline/{name}/{METRIC}"] = curve[len(per_layer) - 1]  # at the model's depth
            reached = [t for t in range(1, depth) if curve[t] <= error]
            first = LAYERS_BEFORE_FIRST_ITERATION[name]
            metrics[f"baseline/{name}/{MATCH}"] = float(reached[0] - first) if reached else float("nan")
        setting, variant = self.setting(), self.variant(paper, model_name, model)
        targets = self.targets(paper)
        published = None
        for name, value in (targets.get(variant) or {}).items():
            if name != "label":
                metrics[f"published/{name}"] = float(value)
        if METRIC in (targets.get(variant) or {}):
            published = Published(METRIC, metrics.pop(f"published/{METRIC}"), paper.source, f"{setting}, {variant}")
        title = f"{model_title(model_name, model)}, {self.W.shape[0]}-pixel patches, {self.W.shape[1]} atoms"
        shown = layers[(layers.layer < len(per_layer)) | layers.layer.isin([k + d for k in SHOWN_ITERATIONS for d in (0, 1)])]
        tables = {"layers.csv": Table(layers, ["layer"], "Mean squared code error ||Z* - Z||^2 per layer (test "
                                      "patches; layer 0 = the all-zero code; the paper's k iterations are layer k + 1 "
                                      "of LISTA, CoD and LCoD, layer k of ISTA and FISTA; layers.csv has every layer)",
                                      shown=shown)}
        if paper is not None and paper.get("targets"):
            tables["table1.csv"] = Table(self.table1(paper, variant, error, layers), ["row"],
                                         f"Table 1 of {paper.source} beside this run")
        plots = {"code_error_per_layer.png": figures.per_layer_figure(layers, "layer", "||Z* - Z||^2", title)}
        notes = [f"Targets: the lasso optimum at alpha {self.alpha:g} by CoD to max coordinate change "
                 f"{self.tol:g} (float64); the dictionary is dictionary.npy. test/code_sq_error = mean ||Z* - Z||^2 "
                 "per patch; test/code_half_sq_error = half of it (the paper's eq. 5 halves the loss; its Table 1 "
                 "does not say). iterations_to_match: the fewest iterations of the baseline (layer - 1 of CoD, layer of "
                 "ISTA and FISTA) whose error "
                 f"is at most the model's, NaN when more than {self.baseline_iterations} are needed."]
        return Report(title, metrics, tables, plots, notes=notes, published=published, curve=("step", True))

    def table1(self, paper: DictConfig, variant: str, error: float, layers: pd.DataFrame) -> pd.DataFrame:
        """The paper's rows (its label, the value at each m) with this run's value where the run has it:
        the model's own row, and the baselines' rows (``<baseline>@<layer>``) from their curves."""
        rows = {}
        for setting, entries in paper.targets.items():
            for key, values in entries.items():
                if METRIC in values:
                    row = rows.setdefault(key, {"row": key, "encoder": values.get("label", key)})
                    row[f"published m={setting[1:]}"] = float(values[METRIC])
        for key, row in rows.items():
            name, _, layer = key.partition("@")
            column = f"baseline/{name}/{METRIC}"
            if key == variant:
                row["this run"] = error
            elif column in layers and layer.isdigit() and int(layer) < len(layers):
                row["this run"] = float(layers[column].iloc[int(layer)])
        return pd.DataFrame(list(rows.values()))

    def targets(self, paper: DictConfig | None) -> dict:
        """``paper.targets[setting]``: variant -> {metric: published value, label}."""
        return dict(((paper.get("targets") if paper is not None else None) or {}).get(self.setting()) or {})

    @staticmethod
    def variant(paper: DictConfig | None, model_name: str, model: torch.nn.Module) -> str:
        """This run's key in the paper's table: ``paper.variant``, else ``<model name>@<layers>``
        (``lista@2``: 1 iteration)."""
        return ((paper.get("variant") if paper is not None else None) or f"{model_name}@{model.layers}")

    def setting(self) -> str:
        return f"m{self.W.shape[1]}"

    def metric_names(self) -> list[str]:
        names = [self.monitor, METRIC, HALF]
        for name in self.baselines:
            names += [f"baseline/{name}/{METRIC}", f"baseline/{name}/{MATCH}"]
        return names

    def artifacts(self) -> dict[str, np.ndarray]:
        """The dictionary W_d (reusable as ``data.dictionary_path``)."""
        return {"dictionary.npy": self.W.numpy()}
