"""Chen et al. 2018's theory of unfolded ISTA as measurements of a trained model (``+diagnostics=coupling``,
``+diagnostics=rate``).

- ``Coupling``: Theorem 1 (noiseless): if ``x_{t+1} = eta_{theta_t}(W_t x_t + B_t y)`` converges to
  every sparse ``x*`` then ``W_t - (I - B_t A) -> 0`` and ``theta_t -> 0``. Per layer
  ``||W_t - (I - B_t A)||_F`` (float64) and ``theta_t``: ``coupling.csv``, ``figures/coupling.png``;
  metrics ``coupling/residual_last`` and ``coupling/theta_last`` (the last layer's). A model declares
  its matrices by ``unfolded_weights()`` (LISTA and LISTA-SS, any ``tied``/``tied_b``/``operator``;
  LIHT); a layer without ``W`` (the first of untied ``W``, which sees ``x_0 = 0``) has no residual (an
  empty cell). A model whose update couples its weights, ``x + B_t (y - A x)`` (``couples_weights``:
  ISTA, FISTA, LISTA-CP(SS), TiLISTA, ALISTA), satisfies ``W_t = I - B_t A`` by construction: its
  residual is 0 in every layer and its ``theta_t`` is reported. Any other model (AMP, LAMP, IHT, OMP,
  the other families) is refused by name.
- ``Rate``: Theorem 2: LISTA-CP(SS) converges linearly, ``||x_t - x*|| <= C exp(-c t)``, a straight line
  in dB. The least-squares line of the task's per-layer metric (``layer_curve(model)``: the test NMSE in
  dB after layers 1..T of ``data=synthetic_sc``) against the layer: ``rate/slope_db_per_layer``,
  ``rate/intercept_db``, ``rate/r2`` and ``figures/rate.png`` (the curve and its line). Layer 0 (the
  all-zero start, the same for every model) is left out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unroll_cli.evaluate.diagnostics import Diagnostic
from unroll_cli.record.figures import figure


class Coupling(Diagnostic):
    """Per layer ``||W_t - (I - B_t A)||_F`` and ``theta_t`` (module docstring)."""

    def refuse(self, model) -> str | None:
        if not (callable(getattr(model, "unfolded_weights", None)) or getattr(model, "couples_weights", False)):
            return ("it has no W_t and B_t of x <- eta(W_t x + B_t y) (unfolded_weights()), nor coupled weights "
                    "(couples_weights): the LISTA family and LIHT have them")
        if not callable(getattr(model, "thresholds", None)) or model.thresholds() is None:
            return "it has no thresholds theta_t (thresholds())"
        return None

    def residuals(self, model) -> list[float]:
        """``||W_t - (I - B_t A)||_F`` per layer in float64 (nan where a layer has no ``W_t``; 0 for
        coupled weights)."""
        if not callable(getattr(model, "unfolded_weights", None)):
            return [0.0] * model.layers
        A = model.A.detach().double()
        eye = torch.eye(A.shape[1], dtype=torch.float64, device=A.device)
        return [float("nan") if W is None else torch.linalg.matrix_norm(W.double() - (eye - B.double() @ A)).item()
                for W, B in model.unfolded_weights()]

    def table(self, model) -> pd.DataFrame:
        return pd.DataFrame({"layer": range(1, model.layers + 1), "residual_fro": self.residuals(model),
                             "theta": model.thresholds().double().cpu().numpy()})

    def measure(self, model) -> dict[str, float]:
        last = self.table(model).iloc[-1]
        return {"residual_last": float(last["residual_fro"]), "theta_last": float(last["theta"])}

    def tables(self, model):
        return {"coupling.csv": (self.table(model), ["layer"])}

    def figures(self, model):
        table = self.table(model)
        fig, axes = figure(1, 2, (9, 3.5))
        for axis, column, label in ((axes[0, 0], "residual_fro", "||W_t - (I - B_t A)||_F"),
                                    (axes[0, 1], "theta", "theta_t")):
            axis.plot(table["layer"], table[column], marker="o", markersize=3)
            axis.set_xlabel("layer")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
        fig.suptitle("weight coupling per layer (Chen et al. 2018, Theorem 1)")
        return {"coupling.png": fig}


def linear_fit(values: list[float]) -> tuple[float, float, float]:
    """Slope, intercept and R^2 of the least-squares line of ``values`` against 1, 2, ...; R^2 is 1 for
    a constant curve (the line fits it exactly)."""
    y = np.asarray(values, dtype=np.float64)
    t = np.arange(1, len(y) + 1, dtype=np.float64)
    if len(y) < 2:
        return 0.0, float(y[0]), 1.0
    slope, intercept = np.polyfit(t, y, 1)
    total = float(((y - y.mean()) ** 2).sum())
    residual = float(((y - (slope * t + intercept)) ** 2).sum())
    return float(slope), float(intercept), 1.0 if total == 0 else 1.0 - residual / total


class Rate(Diagnostic):
    """The linear fit of the task's per-layer metric (dB) against the layer (module docstring)."""

    def refuse(self, model) -> str | None:
        if self.task is not None and not callable(getattr(self.task, "layer_curve", None)):
            return f"its data ({type(self.task).__name__}) gives no per-layer metric (layer_curve(model)) to fit"
        return None

    def fit(self, model) -> tuple[str, list[float], tuple[float, float, float]]:
        name, curve = self.task.layer_curve(model)
        return name, curve, linear_fit(curve)

    def measure(self, model) -> dict[str, float]:
        slope, intercept, r2 = self.fit(model)[2]
        return {"slope_db_per_layer": slope, "intercept_db": intercept, "r2": r2}

    def figures(self, model):
        name, curve, (slope, intercept, r2) = self.fit(model)
        layers = np.arange(1, len(curve) + 1)
        fig, axes = figure()
        axis = axes[0, 0]
        axis.plot(layers, curve, marker="o", markersize=3, label=name)
        axis.plot(layers, slope * layers + intercept, "--", label=f"{slope:.3g} dB/layer, R^2 {r2:.3f}")
        axis.set_xlabel("layer")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        fig.suptitle("linear convergence (Chen et al. 2018, Theorem 2)")
        return {"rate.png": fig}
