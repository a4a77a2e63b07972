"""The sparse-coding task (Chen et al. 2018, Sec. 4.1; Liu et al. 2019): recover the code x from
y = A x (+ noise), trained on synthetic data (:mod:`unroll_cli.data.synthetic`), evaluated by NMSE
after every layer beside classical algorithms at the same depth (ISTA and FISTA at the same threshold;
AMP, IHT, OMP), and by support recovery.

``data.loss`` chooses the training loss (supervised or LASSO) and ``data.loss_reduction`` its scale
over a batch, ``data.nmse`` the NMSE convention (pooled as the LISTA-CPSS/ALISTA code, or per-sample
dB as Open-L2O), ``data.baselines`` the classical algorithms run beside the model (each built by its class's
``from_problem`` from a :class:`~unroll_cli.models.lista.BaselineProblem`: the matrix, the model's depth
and lam, and ``data.p``: IHT keeps ``s = round(p n)`` entries). ``data.A_path``
and ``data.test_path`` give the authors' own problem: their matrix and their fixed test codes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from unroll_cli.errors import ConfigError
from unroll_cli.schema import SEED_RANGE, constrained, evaluation_only, positive, register_schema
from unroll_cli.data.synthetic import gaussian_matrix, load_codes, load_matrix, measure, sample_codes
from unroll_cli.evaluate.metrics import nmse_db, support_recovery
from unroll_cli.models.amp import AMP, AMP_ALPHA
from unroll_cli.models.greedy import OMP
from unroll_cli.models.iht import IHT, support_size
from unroll_cli.models.lista import FISTA, ISTA, BaselineProblem
from unroll_cli.record import figures
from unroll_cli.record.labels import model_title
from unroll_cli.record.report import Published, Report, Table
from unroll_cli.tasks.base import SeededStream, online_epoch

Batch = tuple[torch.Tensor, torch.Tensor]  # (y, x)
# the classical algorithms of data.baselines, each built from the problem by its ``from_problem``
BASELINES = {"ista": ISTA, "fista": FISTA, "amp": AMP, "iht": IHT, "omp": OMP}
METRIC = "test/nmse_db"
# results.md's words for trainer.decay_mode (trainer=layerwise)
DECAY_MODES = {"lr": "learning-rate multiplier of earlier layers (HyperLISTA; the authors' stated intent)",
               "gradient": "gradient of earlier layers scaled before Adam (the authors' TF code as it ran)"}


@register_schema("data", "synthetic_sc")
class SyntheticSparseCodingConfig:
    """y = A x + noise with Bernoulli(p) x N(0,1) codes (Chen et al. 2018, Sec. 4.1)."""

    _target_: str = "unroll_cli.tasks.sparse_coding.SyntheticSparseCoding"
    m: int = constrained(250, "an integer > 0", positive)
    n: int = constrained(500, "an integer > 0", positive)
    p: float = constrained(0.1, "a probability in (0, 1]", lambda v: 0 < v <= 1)
    snr_db: Optional[float] = constrained(None, "null (noiseless) or a number of dB >= -20",
                                          lambda v: v is None or v >= -20, evaluation=True)
    kappa: Optional[float] = constrained(None, "null or >= 1", lambda v: v is None or v >= 1)  # condition number of A
    col_normalized: bool = True
    online: bool = True  # fresh batches every step (TF code) or a fixed set (HyperLISTA)
    n_train: int = constrained(51200, "an integer > 0", positive)  # the fixed training set when online is false
    n_val: int = constrained(1000, "an integer > 0", positive)
    n_test: int = constrained(1000, "an integer > 0", positive, evaluation=True)
    batch_size: int = constrained(64, "an integer > 0", positive)
    matrix_seed: int = constrained(0, *SEED_RANGE)
    val_seed: int = constrained(1, *SEED_RANGE)
    test_seed: int = constrained(2, *SEED_RANGE, evaluation=True)
    A_path: Optional[str] = None  # .npy or .mat file holding the user's own A
    # .npy or .mat file of fixed test codes, one sample per column (n x n_test), e.g. the authors'
    # xtest_n500_p10.npy; y = A x in float64 as their numpy code; null: n_test codes drawn by test_seed
    test_path: Optional[str] = evaluation_only(None)
    loss: str = constrained("supervised", "supervised (MSE to the true code) or lasso (unsupervised)",
                            lambda v: v in ("supervised", "lasso"))
    # the loss's scale over a batch: mean (of the per-sample loss) or tf_l2_loss (the authors' TF
    # code: tf.nn.l2_loss, half the sum of squares, summed over the batch); see SyntheticSparseCoding.loss
    loss_reduction: str = constrained("mean", "mean or tf_l2_loss (the authors' sum over the batch)",
                                      lambda v: v in ("mean", "tf_l2_loss"))
    nmse: str = constrained("pooled", "pooled (LISTA-CPSS/ALISTA code) or per_sample (Open-L2O)",
                            lambda v: v in ("pooled", "per_sample"), evaluation=True)
    # |x_hat_i| > support_tol counts as a detected nonzero
    support_tol: float = constrained(0.0, "a number >= 0", lambda v: v >= 0, changeable=True)
    baselines: List[str] = constrained(["ista", "fista"], "a list of " + ", ".join(BASELINES),
                                       lambda v: set(v) <= set(BASELINES), changeable=True)


def published_curve(paper: DictConfig | None, setting: str, model_name: str) -> list[float] | None:
    """The paper's per-layer values for this setting and model, when the experiment has them."""
    if paper is None:
        return None
    curves = (paper.get("nmse_db") or {}).get(setting, {})
    values = curves.get(model_name)
    return None if values is None else [float(v) for v in values]


def read_or_drawn(path: str | None, seed_key: str, seed: int) -> str:
    """Where a part of the problem comes from, for the run's log: its file, or the seed that drew it."""
    return f"from {Path(path).expanduser().resolve()}" if path else f"drawn by {seed_key}={seed}"


class SyntheticSparseCoding(SeededStream):
    """The sparse-coding task: recover x from y = A x (+ noise); NMSE per layer beside ISTA/FISTA."""

    kind = "sparse_coding"
    model_protocol = {"layers": "the baselines' depth", "lam": "the baselines' threshold"}
    monitor, monitor_mode = "val/nmse_db", "min"
    primary_metric = "test/nmse_db"

    def __init__(self, m: int, n: int, p: float, snr_db: float | None, kappa: float | None,
                 col_normalized: bool, online: bool, n_train: int, n_val: int, n_test: int,
                 batch_size: int, matrix_seed: int, val_seed: int, test_seed: int,
                 A_path: str | None, loss: str = "supervised", nmse: str = "pooled",
                 support_tol: float = 0.0, baselines: Sequence[str] = ("ista", "fista"), seed: int = 0,
                 device: str | torch.device = "cpu", trainer: DictConfig | None = None,
                 test_path: str | None = None, loss_reduction: str = "mean"):
        if A_path:
            A64 = load_matrix(A_path, dtype=torch.float64)
            if A64.shape != (m, n):
                raise ValueError(f"data.A_path holds a {A64.shape[0]}x{A64.shape[1]} matrix but "
                                 f"data.m={m}, data.n={n}: set them to the file's shape")
            A = A64.float()
        else:
            A = gaussian_matrix(m, n, matrix_seed, kappa, col_normalized)
            A64 = A.double()
        self.p, self.snr_db, self.online = p, snr_db, online
        self._kappa = None if A_path else kappa
        self.batch_size = batch_size
        self.nmse, self.support_tol, self.baselines, self.loss_kind = nmse, support_tol, list(baselines), loss
        self.loss_reduction = loss_reduction
        self.device = torch.device(device)
        self.A = A.to(self.device)
        self.val = self._fixed_set(A, n_val, val_seed)
        if test_path:
            self.test = self._file_set(A64, test_path, n_test, test_seed)
        else:
            self.test = self._fixed_set(A, n_test, test_seed)
        for split, key, (_, x) in (("validation", "data.n_val", self.val), ("test", "data.n_test", self.test)):
            if not bool(x.any()):  # the NMSE divides by the codes' energy
                raise ConfigError(f"data.p={p:g} draws no nonzero entry in the {split} codes ({x.shape[0]} codes "
                                  f"of {x.shape[1]}): raise data.p or {key}")
        self.data_source = (f"A {read_or_drawn(A_path, 'data.matrix_seed', matrix_seed)}; training codes drawn by "
                            f"seed={seed}, validation codes by data.val_seed={val_seed}, test codes "
                            f"{read_or_drawn(test_path, 'data.test_seed', test_seed)}")
        # results.md: where the problem comes from, and how the stage-wise schedule decayed earlier layers
        self.notes = [f"Data: A {f'from {Path(A_path).name}' if A_path else 'drawn by data.matrix_seed'}, "
                      f"test codes {f'from {Path(test_path).name}' if test_path else 'drawn by data.test_seed'}; "
                      f"training loss scale: {loss_reduction}."]
        if trainer is not None and trainer.get("decay_mode"):
            self.notes.append(f"Per-layer decay {trainer.layer_decay:g}: {DECAY_MODES[trainer.decay_mode]}.")
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        if online:
            self.steps_per_epoch = online_epoch(trainer)
            self.train_set = None
        else:
            self.train_set = self._fixed_set(A, n_train, seed + 1_000_003)
            self.steps_per_epoch = max(1, n_train // batch_size)

    @staticmethod
    def memory_estimate(data: DictConfig, trainer: DictConfig) -> dict[str, int]:
        """Bytes the task holds (see :mod:`unroll_cli.memory`): A in float64 while it is drawn,
        and the fixed sets' (y, x) pairs with their temporaries."""
        width = data.m + data.n
        estimate = {"data.n": 8 * 4 * data.m * data.n, "data.n_val": 8 * data.n_val * width,
                    "data.n_test": 8 * data.n_test * width, "data.batch_size": 16 * data.batch_size * width}
        if not data.online:
            estimate["data.n_train"] = 8 * data.n_train * width
        return estimate

    @property
    def eval_batch_size(self) -> int:
        """Evaluation sees the whole validation or test set at once."""
        return max(len(self.val[0]), len(self.test[0]))

    def _file_set(self, A64: torch.Tensor, path: str, size: int, seed: int) -> Batch:
        """The test set of ``data.test_path``: its codes (one per column in the file) and y = A x
        computed in float64 from the file's A, as the authors' ``utils/prob.py`` (``np.matmul(A, x)``
        with the float64 D.mat), then float32; noise, when ``data.snr_db`` is set, by ``seed``."""
        x = load_codes(path, A64.shape[1])
        if len(x) != size:
            raise ValueError(f"data.test_path: {path} holds {len(x)} codes but data.n_test={size}: "
                             "set it to the file's count")
        y = measure(x.double(), A64, self.snr_db, torch.Generator().manual_seed(seed)).float()
        return y.to(self.device), x.to(self.device)

    def _fixed_set(self, A: torch.Tensor, size: int, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed)
        x = sample_codes(size, A.shape[1], self.p, gen, "cpu")
        y = measure(x, A, self.snr_db, gen)
        return y.to(self.device), x.to(self.device)

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        """What a model needs from the data to be built."""
        return {"A": self.A}

    def train_batches(self) -> Iterator[Batch]:
        """One epoch of (y, x) training batches on the task's device."""
        if self.online:
            for _ in range(self.steps_per_epoch):
                x = sample_codes(self.batch_size, self.A.shape[1], self.p, self.gen, self.device)
                yield measure(x, self.A, self.snr_db, self.gen), x
        else:
            y_all, x_all = self.train_set
            order = torch.randperm(len(x_all), generator=self.gen, device=self.device)
            for i in range(self.steps_per_epoch):
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                yield y_all[idx], x_all[idx]

    def loss(self, estimates: list[torch.Tensor], batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """``data.loss``: supervised, ||x_hat - x||^2 per sample; lasso (unsupervised),
        0.5||y - A x_hat||^2 + lam ||x_hat||_1 with the model's lam.

        ``data.loss_reduction``: ``mean`` over the batch, or ``tf_l2_loss``, the authors' scale
        (VITA-Group/ALISTA and LISTA-CPSS ``utils/train.py``: ``tf.nn.l2_loss(xh - x)``, half the sum of
        squares over the whole batch, i.e. batch_size/2 = 32 x the mean at batch 64; their LASSO loss
        ``l2_loss + lam * reduce_sum(|x|)`` is the sum of the per-sample objective). Adam undoes a
        constant scale of the gradient except through its eps (a scale c acts as eps -> eps/c), so the
        scale changes training once earlier layers' gradients are scaled down
        (``trainer.decay_mode=gradient``): with the authors' scale, the eps window is theirs.
        """
        y, x = batch
        x_hat = estimates[-1]
        if self.loss_kind == "supervised":
            per_sample = (x_hat - x).pow(2).sum(dim=1)
            return 0.5 * per_sample.sum() if self.loss_reduction == "tf_l2_loss" else per_sample.mean()
        residual = y - x_hat @ self.A.T
        per_sample = 0.5 * residual.pow(2).sum(dim=1) + model.lam * x_hat.abs().sum(dim=1)
        return per_sample.sum() if self.loss_reduction == "tf_l2_loss" else per_sample.mean()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        y, x = self.val
        return {self.monitor: nmse_db(model(y, depth)[-1].float(), x, self.nmse)}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, prefix: str = "test") -> tuple[dict, list[float]]:
        """Final metrics on the test set and the NMSE (dB) after every layer, layer 0 (x = 0) first."""
        y, x = self.test
        estimates = [e.float() for e in model(y)]
        per_layer = [0.0] + [nmse_db(e, x, self.nmse) for e in estimates]
        metrics = {f"{prefix}/nmse_db": per_layer[-1]}
        for key, value in support_recovery(estimates[-1], x, self.support_tol).items():
            metrics[f"{prefix}/support_{key}"] = value
        return metrics, per_layer

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None, history: list[dict]) -> Report:
        """Test metrics of the model and of ISTA/FISTA at the same depth and threshold, the final
        validation NMSE (what a hyper-parameter search should select on); layers.csv (layer 0: the
        all-zero start) beside the published curve, and the figures."""
        metrics, per_layer = self.evaluate(model)
        metrics.update(self.validate(model))
        depth = len(per_layer)
        layers = pd.DataFrame({"layer": range(depth), METRIC: per_layer})
        problem = BaselineProblem(self.A, model.layers, model.lam, self.p)
        for name in self.baselines:
            baseline_metrics, baseline_layers = self.evaluate(BASELINES[name].from_problem(problem),
                                                              prefix=f"baseline/{name}/test")
            metrics.update(baseline_metrics)
            layers[f"baseline/{name}/{METRIC}"] = baseline_layers
            baseline_curve = published_curve(paper, self.setting(), name)
            if baseline_curve is not None and len(baseline_curve) >= depth:
                layers[f"published/baseline/{name}/{METRIC}"] = baseline_curve[:depth]
        curve, published, shown = published_curve(paper, self.setting(), model_name), None, layers
        if curve is not None and len(curve) >= depth:
            layers[f"published/{METRIC}"] = curve[:depth]
            shown = layers.assign(difference=layers[METRIC] - layers[f"published/{METRIC}"])
            published = Published(METRIC, curve[depth - 1], f"{paper.source}, reading error +-{paper.tolerance_db} dB",
                                  f"layer {depth - 1}")

        title = f"{model_title(model_name, model)}, {self.A.shape[0]}x{self.A.shape[1]}, {self.setting()}"
        plots = {"nmse_per_layer.png": figures.per_layer_figure(layers, "layer", "NMSE (dB)", title)}
        learned = {}
        for label, method in (("threshold", "thresholds"), ("step size", "step_sizes")):
            values = getattr(model, method, lambda: None)()
            if values is not None:
                learned[label] = values.tolist()
        if learned:  # models that declare their thresholds / step sizes
            plots["thresholds.png"] = figures.parameters_figure(learned, f"{model_title(model_name, model)}: "
                                                                "learned per layer")
        table = Table(layers, ["layer"], "NMSE (dB) per layer (test set, layer 0 = the all-zero start)", shown=shown)
        return Report(title, metrics, {"layers.csv": table}, plots, published=published, curve=("step", False),
                      notes=[f"NMSE convention: {self.nmse}; baselines run at the model's depth: "
                             + "; ".join(self.baseline_words()) + ".",
                             *self.notes])

    def baseline_words(self) -> list[str]:
        """results.md's words for each baseline: how it was set beside the model."""
        words = {"ista": "ISTA at the model's lam", "fista": "FISTA at the model's lam",
                 "amp": f"AMP at alpha {AMP_ALPHA:g} of the residual's rms",
                 "iht": f"IHT keeping s = round(p n) = {support_size(self.p, self.A.shape[1])} entries",
                 "omp": "OMP one atom per layer"}
        return [words[name] for name in self.baselines]

    def layer_curve(self, model: torch.nn.Module) -> tuple[str, list[float]]:
        """The test NMSE (dB) after layers 1..T (``+diagnostics=rate``), and its metric's name."""
        return METRIC, self.evaluate(model)[1][1:]

    def metric_names(self) -> list[str]:
        """The metrics a run of this task reports (``published/...`` besides, when a paper has them)."""
        support = [f"support_{k}" for k in ("precision", "recall", "f1")]
        names = ["val/nmse_db"]
        for prefix in ["test"] + [f"baseline/{b}/test" for b in self.baselines]:
            names += [f"{prefix}/{metric}" for metric in ["nmse_db", *support]]
        return names

    def artifacts(self) -> dict[str, np.ndarray]:
        """Arrays that belong to the run directory (the matrix A defines the problem)."""
        return {"A.npy": self.A.cpu().numpy()}

    def setting(self) -> str:
        """The published-figure key of this problem: noiseless, snr40, kappa30, ..."""
        if self._kappa is not None:
            return f"kappa{self._kappa:g}"
        return "noiseless" if self.snr_db is None else f"snr{self.snr_db:g}"
