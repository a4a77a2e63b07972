"""Dictionary learning with a known ground truth (Tolooshams & Ba, TMLR 2022, the theory and
baseline experiments; the authors' ``src/train_dl_choose_gd.py``, ``src/compare_gradients.py``,
``src/train_dl_compare_baselines.py``): learn D from x = D* z* (:mod:`unroll_cli.data.dictionary_learning`)
with an unrolled autoencoder started near D*, and measure after every epoch how far D is from D*.

The model gets the task's initial dictionary D* + dict_init N(0, 1) (columns renormalised) as
``init_dictionary``, and its input x as (N, 1, m, 1) signals. The training loss is the authors'
``SparseLoss``: ``0.5 ||x - x_hat||^2`` summed over the signal, averaged over the batch, plus the model's
``loss_penalty()`` (its gradient mode's, e.g. ``lam ||z_T||_1`` for g_ae-lasso).

After every epoch: ``dictionary/error``, ``||D - D*||_F`` with unit columns after pairing the atoms up
to order and sign (:mod:`unroll_cli.evaluate.dictionary`), ``dictionary/relative_error`` (over
``||D*||_F``), the mean ``||z_T - z*||_2`` over the validation and the test codes, and the test
reconstruction's NMSE against the clean x, ``test/nmse_db`` (pooled: ``10 log10(sum ||D z_T - x||^2 /
sum ||x||^2)``). With
``gradient_study`` also, on the first ``batch_size`` training samples (the authors' full batch): the
model's own gradient g_T (its mode, :meth:`TiedAutoencoder.dictionary_gradient`) against g_hat, the
decoder gradient at z_hat, the code of the same network unrolled ``lasso_steps`` times (the lasso
solution), and against g*, the decoder gradient ``(D z* - x) z*^T / N`` at the true codes; and
``||z_T - z_hat||_2``. The monitored metric is ``dictionary/error``; the run reports its last
dictionary, as the authors' curves end.

Noise (``sigma``): the model sees y = x + sigma N(0, 1) (the training set's noise fixed by the run's
seed, fresh noise online; the validation and test sets' fixed by their seeds and sigma alone) and
learns to reconstruct y, as the generative model of Theodosis et al. (arXiv 2102.07003); the test
metrics score its reconstruction against the clean x. ``test_sigmas`` evaluates the trained model at
other noise levels too: ``test/nmse_db_s{sigma}`` and ``test/code_error_s{sigma}`` for each, the noise
of a level the same whatever the training sigma, so that the training sigma's equal ``test/nmse_db``
and ``test/code_error``.

For ``+diagnostics=robustness`` (:mod:`unroll_cli.evaluate.robustness`) the task gives its test pairs
(the inputs at sigma, the clean x) and its metric (``nmse_db``).
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional

import pandas as pd
import torch
from omegaconf import DictConfig

from unroll_cli.data.dictionary_learning import CODES, initial_dictionary, sample_codes, seeded, true_dictionary
from unroll_cli.evaluate.dictionary import matched_distance
from unroll_cli.evaluate.metrics import nmse_db
from unroll_cli.record import figures
from unroll_cli.record.labels import model_title
from unroll_cli.record.report import Published, Report, Table
from unroll_cli.schema import SEED_RANGE, constrained, evaluation_only, positive, register_schema
from unroll_cli.tasks.base import SeededStream, online_epoch

Batch = tuple[torch.Tensor, torch.Tensor]  # (x as (N, 1, m, 1), z*)
DICTIONARY, RELATIVE = "dictionary/error", "dictionary/relative_error"
GRADIENT_METRICS = ("gradient/g_hat_error", "gradient/g_star_error", "gradient/g_hat_g_star",
                    "gradient/z_hat_error")
non_negative = lambda v: v >= 0  # noqa: E731
NMSE = "test/nmse_db"
TEST_SIGMAS = ("a list of noise stds >= 0 on x, distinct as the metric names print them "
               "(test/nmse_db_s0.1)")


def valid_test_sigmas(values: list) -> bool:
    """``data.test_sigmas``: each level has its own metrics, named with ``{sigma:g}``."""
    return min(values, default=0) >= 0 and len({f"{s:g}" for s in values}) == len(values)


def sigma_metrics(sigma: float) -> tuple[str, str]:
    """The test NMSE's and code error's names at test noise ``sigma``: test/nmse_db_s0.1, ..."""
    return f"{NMSE}_s{sigma:g}", f"test/code_error_s{sigma:g}"


@register_schema("data", "synthetic_dl")
class SyntheticDictionaryLearningConfig:
    """x = D* z*, D* m x p, s-sparse codes (Tolooshams & Ba 2022's theory configuration by default)."""

    _target_: str = "unroll_cli.tasks.dictionary_learning.SyntheticDictionaryLearning"
    m: int = constrained(50, "an integer > 0", positive)
    p: int = constrained(100, "an integer > 0", positive)
    s: int = constrained(5, "an integer > 0 (at most data.p)", positive)
    code: str = constrained("uniform", "uniform, subgaussian or group_sparse", lambda v: v in CODES)
    c_min: float = constrained(1.0, "a number >= 0", non_negative)  # uniform / group_sparse magnitudes
    c_max: float = constrained(2.0, "a number >= 0 (at least data.c_min)", non_negative)
    z_mean: float = constrained(5.0, "a finite number", math.isfinite)  # subgaussian: N(z_mean, z_std) x a sign
    z_std: float = constrained(1.0, "a number >= 0", non_negative)
    group_size: int = constrained(5, "an integer > 0 dividing data.p", positive)  # group_sparse
    active_groups: int = constrained(1, "an integer > 0", positive)
    n: int = constrained(10000, "an integer > 0", positive)  # the fixed training set
    online: bool = False  # fresh samples every step instead (trainer.steps_per_epoch batches an epoch)
    n_val: int = constrained(1000, "an integer > 0", positive)
    n_test: int = constrained(1000, "an integer > 0", positive, evaluation=True)
    batch_size: int = constrained(10000, "an integer > 0 (at most data.n)", positive)
    dict_init: float = constrained(0.1, "a number >= 0", non_negative)  # D* + dict_init N(0, 1)
    sigma: float = constrained(0.0, "a noise std >= 0 on x", non_negative)  # y = x + sigma N(0, 1)
    test_sigmas: List[float] = constrained([], TEST_SIGMAS, valid_test_sigmas, changeable=True)
    dictionary_seed: int = constrained(0, *SEED_RANGE)
    val_seed: int = constrained(1, *SEED_RANGE)
    test_seed: int = constrained(2, *SEED_RANGE, evaluation=True)
    gradient_study: bool = evaluation_only(False)
    lasso_steps: int = constrained(1000, "an integer > 0", positive, evaluation=True)  # z_hat, g_hat


def check_sizes(p: int, s: int, code: str, c_min: float, c_max: float, group_size: int, active_groups: int,
                n: int, batch_size: int, online: bool) -> None:
    """Refuse keys that do not fit together, naming them (each alone is checked by the schema)."""
    if code == "group_sparse":
        if p % group_size:
            raise ValueError(f"data.group_size={group_size} must divide data.p={p}")
        if active_groups > p // group_size:
            raise ValueError(f"data.active_groups={active_groups} is more than the {p // group_size} groups "
                             f"of data.p={p} / data.group_size={group_size}")
    elif s > p:
        raise ValueError(f"data.s={s} non-zeros do not fit in codes of data.p={p} entries: choose s <= p")
    if c_min > c_max:
        raise ValueError(f"data.c_min={c_min:g} is larger than data.c_max={c_max:g}")
    if not online and batch_size > n:
        raise ValueError(f"data.batch_size={batch_size} is larger than the training set, data.n={n}")


class SyntheticDictionaryLearning(SeededStream):
    """Learn D from x = D* z* starting near D*; D's distance to D* after every epoch (module docstring)."""

    kind = "denoising"  # the autoencoders' kind of data: an input they reconstruct
    monitor, monitor_mode = DICTIONARY, "min"
    primary_metric = DICTIONARY

    def __init__(self, m: int, p: int, s: int, code: str, c_min: float, c_max: float, z_mean: float,
                 z_std: float, group_size: int, active_groups: int, n: int, online: bool, n_val: int,
                 n_test: int, batch_size: int, dict_init: float, dictionary_seed: int, val_seed: int,
                 test_seed: int, sigma: float = 0.0, test_sigmas: tuple[float, ...] = (),
                 gradient_study: bool = False, lasso_steps: int = 1000, seed: int = 0,
                 device: str | torch.device = "cpu", trainer: Optional[DictConfig] = None):
        check_sizes(p, s, code, c_min, c_max, group_size, active_groups, n, batch_size, online)
        self.law = dict(p=p, s=s, code=code, c_min=c_min, c_max=c_max, z_mean=z_mean, z_std=z_std,
                        group_size=group_size, active_groups=active_groups)
        self.m, self.s, self.dict_init, self.online = m, s, dict_init, online
        self.batch_size, self.gradient_study, self.lasso_steps = batch_size, gradient_study, lasso_steps
        self.sigma, self.test_sigmas = float(sigma), [float(s) for s in test_sigmas]
        self.device = torch.device(device)
        self.D_true = true_dictionary(m, p, torch.Generator().manual_seed(dictionary_seed)).to(self.device)
        self.D_init = initial_dictionary(self.D_true.cpu(), dict_init, seeded(seed, 1))
        # the clean (x, z*) pairs; the inputs y at each noise level
        self.val = self._fixed_set(n_val, torch.Generator().manual_seed(val_seed))
        self.test = self._fixed_set(n_test, torch.Generator().manual_seed(test_seed))
        self.val_input = self._fixed_noise(self.val[0], self.sigma, val_seed)
        self.test_inputs = {s: self._fixed_noise(self.test[0], s, test_seed) for s in [self.sigma, *self.test_sigmas]}
        self.gen = torch.Generator().manual_seed(seed)
        if online:
            self.train_set = None
            self.steps_per_epoch = online_epoch(trainer)
            self.gradient_batch = self._noisy_set(self._fixed_set(batch_size, seeded(seed, 3)), seeded(seed, 5))
        else:
            self.train_set = self._noisy_set(self._fixed_set(n, seeded(seed, 2)), seeded(seed, 4))
            self.steps_per_epoch = n // batch_size
            self.gradient_batch = tuple(t[:batch_size] for t in self.train_set)
        self.eval_batch_size = max(n_val, n_test, batch_size if gradient_study else 0)
        self.model_protocol = {"dictionaries": "D's distance to D*", "encode": "the codes' error"}
        if gradient_study:
            self.model_protocol["dictionary_gradient"] = "data.gradient_study"
        self.data_source = (f"D* drawn by data.dictionary_seed={dictionary_seed}, its initial estimate and the "
                            f"training codes by seed={seed}{' (online)' if online else ''}, validation codes by "
                            f"data.val_seed={val_seed}, test codes by data.test_seed={test_seed}"
                            + (f"; noise std data.sigma={sigma:g} on x" if sigma else ""))

    @staticmethod
    def memory_estimate(data: DictConfig, trainer: DictConfig) -> dict[str, int]:
        """Bytes the task holds (:mod:`unroll_cli.memory`): D* and its estimate, the fixed sets' (x, z*)
        pairs and their drawing's temporaries (a random key per code entry)."""
        width = 4 * (data.m + 3 * data.p)
        estimate = {"data.p": 8 * data.m * data.p, "data.n_val": data.n_val * (width + 4 * data.m),
                    "data.n_test": data.n_test * width, "data.batch_size": 2 * data.batch_size * width,
                    "data.test_sigmas": (len(data.test_sigmas) + 1) * data.n_test * 4 * data.m}
        if not data.online:
            estimate["data.n"] = data.n * width
        return estimate

    def _fixed_set(self, count: int, gen: torch.Generator) -> Batch:
        """``count`` pairs (x, z*) drawn on the CPU by ``gen``, x as the model's (N, 1, m, 1) input."""
        z = sample_codes(count, gen=gen, **self.law)
        return self._signals(z @ self.D_true.cpu().T).to(self.device), z.to(self.device)

    def _signals(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), 1, self.m, 1)

    def _noise(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``sigma N(0, 1)`` shaped like ``x``, drawn on the CPU by ``gen``."""
        return self.sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)

    def _noisy_set(self, pairs: Batch, gen: torch.Generator) -> Batch:
        """The pairs (y, z*), y = x + sigma N(0, 1) drawn by ``gen`` (x itself at sigma 0)."""
        x, z = pairs
        return (x + self._noise(x, gen) if self.sigma else x), z

    @staticmethod
    def _fixed_noise(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
        """``x + sigma N(0, 1)``, the noise drawn by (seed, sigma) alone: the same at a level in every run."""
        if sigma == 0:
            return x
        gen = seeded(seed, round(sigma * 1e6))
        return x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        """One channel, the signals' size, a few training signals (their shape; ``init=data``), and
        the initial dictionary."""
        signals = (self.train_set or self.gradient_batch)[0][:64].cpu()
        return {"in_channels": 1, "init_images": signals, "init_dictionary": self.D_init,
                "input_sizes": {f"the signals x (data.m={self.m})": (self.m, 1)}}

    def train_batches(self) -> Iterator[Batch]:
        """One epoch of (x, z*) batches: fresh samples (``online``) or a pass over the training set in
        a fresh random order (the last incomplete batch dropped); drawn on the CPU by the task's generator."""
        order = None if self.online else torch.randperm(len(self.train_set[1]), generator=self.gen)
        for i in range(self.steps_per_epoch):
            if self.online:
                z = sample_codes(self.batch_size, gen=self.gen, **self.law).to(self.device)
                x = self._signals(z @ self.D_true.T)
                yield (x + self._noise(x, self.gen) if self.sigma else x), z
            else:
                idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
                yield self.train_set[0][idx], self.train_set[1][idx]

    def loss(self, outputs: list[torch.Tensor], batch: Batch, model: torch.nn.Module) -> torch.Tensor:
        """``0.5 ||x - x_hat||^2`` summed over the signal, mean over the batch, plus the model's penalty."""
        loss = 0.5 * (outputs[-1] - batch[0]).pow(2).flatten(1).sum(dim=1).mean()
        penalty = getattr(model, "loss_penalty", None)
        return loss if penalty is None else loss + penalty()

    # ------------------------------------------------------------------ evaluation
    def learned(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's dictionary D as an (m, p) matrix (its ``dictionaries()["D"]``, one atom a row)."""
        atoms = model.dictionaries()["D"]
        return atoms.reshape(len(atoms), -1).T

    @torch.no_grad()
    def code_error(self, model: torch.nn.Module, inputs: torch.Tensor, z: torch.Tensor,
                   depth: int | None = None) -> float:
        """The mean ``||z_T - z*||_2`` of the codes of ``inputs`` against their true codes ``z``."""
        return (model.encode(inputs, depth).reshape(len(z), -1) - z).norm(dim=1).mean().item()

    @torch.no_grad()
    def test_scores(self, model: torch.nn.Module, sigma: float, depth: int | None = None) -> tuple[float, float]:
        """The test reconstruction's NMSE (dB) against the clean x and the code error, at noise ``sigma``."""
        inputs = self.test_inputs[sigma]
        nmse = self.reconstruction_scores(model(inputs, depth)[-1], self.test[0])["nmse_db"]
        return nmse, self.code_error(model, inputs, self.test[1], depth)

    def validate(self, model: torch.nn.Module, depth: int | None = None) -> dict[str, float]:
        """The dictionary's distance to D*, the codes' errors (validation and test codes), the test NMSE
        and, with ``gradient_study``, the gradients' errors; inputs at the training sigma."""
        error = matched_distance(self.learned(model), self.D_true)
        nmse, test_codes = self.test_scores(model, self.sigma, depth)
        metrics = {DICTIONARY: error, RELATIVE: error / self.D_true.shape[1] ** 0.5,
                   "val/code_error": self.code_error(model, self.val_input, self.val[1], depth),
                   "test/code_error": test_codes, NMSE: nmse}
        if self.gradient_study:
            metrics.update(self.gradients(model))
        return metrics

    def gradients(self, model: torch.nn.Module) -> dict[str, float]:
        """On the first ``batch_size`` training samples: ``||g_T - g_hat||_F``, ``||g_T - g*||_F``,
        ``||g_hat - g*||_F`` and the mean ``||z_T - z_hat||_2`` (module docstring)."""
        x, z_star = self.gradient_batch
        g = model.dictionary_gradient(x)
        z_hat = model.encode(x, self.lasso_steps)
        g_hat, g_star = model.dictionary_gradient(x, z_hat), model.dictionary_gradient(x, z_star)
        z_error = (model.encode(x) - z_hat).reshape(len(x), -1).norm(dim=1).mean()
        values = [(g - g_hat).norm(), (g - g_star).norm(), (g_hat - g_star).norm(), z_error]
        return {name: value.item() for name, value in zip(GRADIENT_METRICS, values)}

    @torch.no_grad()
    def per_layer(self, model: torch.nn.Module) -> pd.DataFrame:
        """The mean reconstruction error ``||D z_t - x||_2`` against the clean test signals after every
        layer (inputs at the training sigma)."""
        x = self.test[0]
        errors = [(estimate - x).flatten(1).norm(dim=1).mean().item()
                  for estimate in model(self.test_inputs[self.sigma])]
        return pd.DataFrame({"layer": range(1, len(errors) + 1), "test/reconstruction_error": errors})

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None, history: list[dict]) -> Report:
        """The final dictionary's distance to D*, the codes' and (``gradient_study``) the gradients'
        errors; the published values of this setting and variant when the paper config has them,
        with the dictionary's error at the epochs the paper's curve gives."""
        metrics = self.validate(model)
        layers = self.per_layer(model)
        title = f"{model_title(model_name, model)}, dictionary learning {self.setting()}"
        tables = {"layers.csv": Table(layers, ["layer"], "Reconstruction error per layer (test signals)")}
        if self.test_sigmas:
            sigmas = self.per_sigma(model)
            tables["sigmas.csv"] = Table(sigmas, ["sigma"], f"Test NMSE and code error per test noise "
                                                            f"(trained at sigma {self.sigma:g})")
            for row in sigmas.itertuples():
                names = sigma_metrics(row.sigma)
                metrics[names[0]], metrics[names[1]] = row.nmse_db, row.code_error
        published = None
        targets = self.published(paper, model_name)
        if targets:
            curve = targets.pop("epochs", None)
            for name, value in targets.items():
                metrics[f"published/{name}"] = float(value)
            if paper.metric in targets:
                published = Published(paper.metric, metrics.pop(f"published/{paper.metric}"), paper.source,
                                      f"{self.setting()}, {self.variant(paper, model_name)}")
            if curve:
                tables["dictionary_curve.csv"] = Table(self.curve(curve, history, paper.metric), ["epoch"],
                                                       f"{paper.metric} at the published curve's epochs")
        plots = {"reconstruction_per_layer.png": figures.per_layer_figure(layers, "layer", "mean ||D z_t - x||", title)}
        notes = [f"Data: x = D* z*{' + noise' if self.sigma else ''}, D* {self.m}x{self.D_true.shape[1]}, "
                 f"{self.law['code']} codes{f', noise std {self.sigma:g}' if self.sigma else ''}; the initial "
                 f"dictionary D* + {self.dict_init:g} N(0, 1), unit columns. dictionary/error = ||D - D*||_F with "
                 "unit columns, atoms paired up to order and sign (Hungarian method on |D*^T D|); relative: "
                 "over ||D*||_F."]
        if self.gradient_study:
            notes.append(f"Gradients on the first {len(self.gradient_batch[0])} training samples; g_hat and z_hat "
                         f"from the same network unrolled {self.lasso_steps} times, g* the decoder gradient at z*.")
        return Report(title, metrics, tables, plots, notes=notes, published=published)

    def per_sigma(self, model: torch.nn.Module) -> pd.DataFrame:
        """Per test sigma: the test NMSE (dB) against the clean x and the mean code error."""
        rows = [(s, *self.test_scores(model, s)) for s in self.test_sigmas]
        return pd.DataFrame(rows, columns=["sigma", "nmse_db", "code_error"])

    # ------------------------------------------------------------------ for diagnostics
    def test_pairs(self) -> list[Batch]:
        """The test inputs at the training sigma with their clean targets, in batches the model takes."""
        return [(self.test_inputs[self.sigma], self.test[0])]

    @staticmethod
    def reconstruction_scores(estimate: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``nmse_db``: the pooled NMSE (dB) of the estimates against the clean signals."""
        return {"nmse_db": nmse_db(estimate.flatten(1), target.flatten(1))}

    @staticmethod
    def curve(published: dict, history: list[dict], metric: str) -> pd.DataFrame:
        """This run's ``metric`` at the published curve's epochs it reached, beside the curve."""
        run = {row["epoch"]: row[metric] for row in history if metric in row}
        epochs = [int(e) for e in published if int(e) in run]
        return pd.DataFrame({"epoch": epochs, metric: [run[e] for e in epochs],
                             f"published/{metric}": [float(published[e]) for e in epochs]})

    @staticmethod
    def variant(paper: DictConfig, model_name: str) -> str:
        return paper.get("variant") or model_name

    def published(self, paper: DictConfig | None, model_name: str) -> dict:
        """``paper.targets[setting][variant]``: {metric: published value, "epochs": {epoch: value}}."""
        if paper is None:
            return {}
        found = ((paper.get("targets") or {}).get(self.setting()) or {}).get(self.variant(paper, model_name))
        return {} if found is None else dict(found)

    def setting(self) -> str:
        """The published key of this problem: m50_p100_s5_init0.1."""
        return f"m{self.m}_p{self.D_true.shape[1]}_s{self.s}_init{self.dict_init:g}"

    def metric_names(self) -> list[str]:
        names = [DICTIONARY, RELATIVE, "val/code_error", "test/code_error", NMSE]
        names += [name for s in self.test_sigmas for name in sigma_metrics(s)]
        return names + list(GRADIENT_METRICS) * self.gradient_study

    def artifacts(self) -> dict:
        """The true dictionary and the model's initial one define the problem."""
        return {"D_true.npy": self.D_true.cpu().numpy(), "D_init.npy": self.D_init.numpy()}
