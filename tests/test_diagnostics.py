"""Run diagnostics: the coherence diagnostic against a slow pairwise loop, per-epoch columns, and the
refusal of a diagnostic that does not apply to the model."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg, read_metrics
from unroll_cli.errors import ConfigError
from unroll_cli.evaluate.coherence import atoms
from unroll_cli.run import run


def pairwise_coherence(columns: np.ndarray) -> float:
    """max over i != j of |<d_i, d_j>| / (||d_i|| ||d_j||), one pair at a time."""
    n = columns.shape[1]
    return max(abs(columns[:, i] @ columns[:, j]) / np.linalg.norm(columns[:, i]) / np.linalg.norm(columns[:, j])
               for i, j in itertools.permutations(range(n), 2))


def alista_weight_by_columns(A: np.ndarray) -> np.ndarray:
    """Liu et al. 2019 eq. 16 one column at a time: min w^T (A A^T) w s.t. a_j^T w = 1, by its KKT system."""
    m, n = A.shape
    G, W = A @ A.T, np.zeros_like(A)
    for j in range(n):
        kkt = np.block([[2 * G, A[:, [j]]], [A[:, [j]].T, np.zeros((1, 1))]])
        W[:, j] = np.linalg.lstsq(kkt, np.r_[np.zeros(m), 1.0], rcond=None)[0][:m]
    return W


def test_coherence_of_alista_is_the_dictionarys_and_the_generalised_one(tiny_cfg, tmp_path):
    run(tiny_cfg("model=alista", "+diagnostics=coherence", "trainer.max_epochs=1", "tensorboard=false"), tmp_path)
    metrics = read_metrics(tmp_path)["metrics"]
    A = np.load(tmp_path / "A.npy").astype(np.float64)
    assert metrics["coherence/dictionary"] == pytest.approx(pairwise_coherence(A), rel=1e-6)
    W = alista_weight_by_columns(A)
    generalized = max(abs(W[:, i] @ A[:, j]) for i, j in itertools.permutations(range(A.shape[1]), 2))
    assert metrics["coherence/generalized"] == pytest.approx(generalized, rel=1e-4)
    assert metrics["coherence/generalized"] < metrics["coherence/dictionary"]  # what W is chosen for
    per_atom = pd.read_csv(tmp_path / "coherence.csv")
    assert per_atom["max_coherence"].max() == pytest.approx(metrics["coherence/dictionary"])
    assert (tmp_path / "figures/coherence.png").is_file()


def test_per_epoch_coherence_is_a_history_column(tiny_cfg, tmp_path):
    run(tiny_cfg("model=tilista", "+diagnostics=coherence", "diagnostics.coherence.per_epoch=true",
                 "trainer.max_epochs=3", "optim.lr=0.01", "tensorboard=false"), tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    A = np.load(tmp_path / "A.npy").astype(np.float64)
    assert history["coherence/dictionary"].tolist() == pytest.approx([pairwise_coherence(A)] * 3, rel=1e-6)
    assert history["coherence/generalized"].nunique() == 3  # TiLISTA's W learns


def test_the_atoms_of_a_filter_stack_are_its_first_axis():
    filters = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    rows = atoms(filters)
    assert rows.shape == (5, 18)
    gram = (rows @ rows.t()).abs().fill_diagonal_(0).max().item()
    assert gram == pytest.approx(pairwise_coherence(filters.reshape(5, -1).numpy().T))


def test_a_diagnostic_that_does_not_apply_is_refused_before_training(tmp_path):
    cfg = compose_cfg(["data=transform", "data.N=8", "model=bp", "+diagnostics=coherence"])
    with pytest.raises(ConfigError, match=r"diagnostics\.coherence does not apply to model=bp: .*no dictionaries"):
        run(cfg, tmp_path)
    assert not (tmp_path / "history.csv").exists()


def test_a_diagnostic_may_be_added_on_resume(tiny_cfg, tmp_path):
    run(tiny_cfg("model=lista_cp", "tensorboard=false"), tmp_path / "first")
    run(tiny_cfg("model=lista_cp", "tensorboard=false", "+diagnostics=coherence", "trainer.max_epochs=3",
                 f"resume={tmp_path / 'first'}"), tmp_path / "resumed")
    assert "coherence/dictionary" in read_metrics(tmp_path / "resumed")["metrics"]
