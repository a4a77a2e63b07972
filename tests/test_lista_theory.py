"""+diagnostics=coupling and +diagnostics=rate (Chen et al. 2018, Theorems 1 and 2): the coupling residual
against numpy on the saved weights, coupled models at 0, refusals by name, and the rate against numpy.polyfit
on layers.csv."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg, read_metrics
from unroll_cli.errors import ConfigError
from unroll_cli.run import run


def saved_weights(run_dir) -> dict[str, np.ndarray]:
    """The trained model's tensors as the run's last checkpoint holds them, in float64."""
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    return {name: value.double().numpy() for name, value in state.items()}


@pytest.mark.parametrize("tied", ["true", "false"])
def test_the_coupling_residual_is_numpys_on_the_saved_weights(tiny_cfg, tmp_path, tied):
    run(tiny_cfg("model=lista", f"model.tied={tied}", f"model.tied_b={tied}", "model.unit_thresholds=true",
                 "+diagnostics=[coupling]", "trainer.max_epochs=1", "optim.lr=0.01", "tensorboard=false"), tmp_path)
    w, table = saved_weights(tmp_path), pd.read_csv(tmp_path / "coupling.csv")
    A, layers = w["A"], 4
    for t in range(layers):
        B = w["B"] if tied == "true" else w[f"B.{t}"]
        W = w["W"] if tied == "true" else (None if t == 0 else w[f"W.{t - 1}"])
        expected = np.nan if W is None else np.sqrt(((W - (np.eye(A.shape[1]) - B @ A)) ** 2).sum())
        np.testing.assert_allclose(table["residual_fro"][t], expected, rtol=1e-9)
        assert table["theta"][t] == pytest.approx(w[f"theta.{t}"].mean(), rel=1e-6)  # per unit: their mean
    assert table["layer"].tolist() == [1, 2, 3, 4]
    assert table["residual_fro"].iloc[-1] > 0  # training moved W off I - B A
    metrics = read_metrics(tmp_path)["metrics"]
    assert metrics["coupling/residual_last"] == pytest.approx(table["residual_fro"].iloc[-1])
    assert (tmp_path / "figures/coupling.png").is_file()


def test_coupled_weights_have_no_residual_and_their_thresholds(tiny_cfg, tmp_path):
    run(tiny_cfg("model=lista_cp", "model.tied=false", "+diagnostics=coupling", "trainer.max_epochs=1",
                 "tensorboard=false"), tmp_path)
    table, w = pd.read_csv(tmp_path / "coupling.csv"), saved_weights(tmp_path)
    assert table["residual_fro"].tolist() == [0.0] * 4
    np.testing.assert_allclose(table["theta"], [w[f"theta.{t}"] for t in range(4)], rtol=1e-6)


@pytest.mark.parametrize("model", ["lamp", "omp", "iht"])
def test_a_model_without_unfolded_weights_is_refused_by_name(tiny_cfg, tmp_path, model):
    with pytest.raises(ConfigError, match=rf"diagnostics\.coupling does not apply to model={model}: "):
        run(tiny_cfg(f"model={model}", "+diagnostics=coupling"), tmp_path)
    assert not (tmp_path / "history.csv").exists()


def test_the_rate_is_numpys_line_through_the_per_layer_nmse(tiny_cfg, tmp_path):
    run(tiny_cfg("model=lista_cpss", "+diagnostics=rate", "trainer.max_epochs=1", "tensorboard=false"), tmp_path)
    curve = pd.read_csv(tmp_path / "layers.csv")["test/nmse_db"].to_numpy()[1:]  # layers 1..T
    layer = np.arange(1, len(curve) + 1)
    slope, intercept = np.polyfit(layer, curve, 1)
    r2 = np.corrcoef(layer, curve)[0, 1] ** 2  # R^2 of a least-squares line: the squared correlation
    metrics = read_metrics(tmp_path)["metrics"]
    assert metrics["rate/slope_db_per_layer"] == pytest.approx(slope, rel=1e-9)
    assert metrics["rate/intercept_db"] == pytest.approx(intercept, rel=1e-9)
    assert metrics["rate/r2"] == pytest.approx(r2, rel=1e-9)
    assert (tmp_path / "figures/rate.png").is_file() and (tmp_path / "figures/nmse_per_layer.png").is_file()


def test_the_rate_is_refused_on_data_without_a_per_layer_metric(tmp_path):
    cfg = compose_cfg(["data=transform", "data.N=8", "model=bp", "+diagnostics=rate"])
    with pytest.raises(ConfigError, match=r"diagnostics\.rate does not apply to model=bp: .*layer_curve"):
        run(cfg, tmp_path)


def test_a_structured_lista_gives_the_dense_matrices_its_layers_apply():
    """A butterfly W_t and B_t as dense matrices: x W_t^T and y B_t^T are what the layers compute."""
    from unroll_cli.models.lista import LISTA

    model = LISTA(torch.randn(8, 16, dtype=torch.float64), layers=3, lam=0.4, operator="butterfly",
                  tied=False, tied_b=False)
    x, y = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    for t, (W, B) in enumerate(model.unfolded_weights()):
        torch.testing.assert_close(y @ B.t(), model.B[t](y).detach())
        assert (W is None) == (t == 0)
        if W is not None:
            torch.testing.assert_close(x @ W.t(), model.W[t - 1](x).detach())
