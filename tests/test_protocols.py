"""What a task needs of a model, refused before training; a model with several dictionaries."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unroll_cli.errors import ConfigError
from unroll_cli.evaluate.coherence import Coherence
from unroll_cli.record.dictionaries import write_dictionaries
from unroll_cli.record.recorder import RunRecorder
from unroll_cli.run import run
from unroll_cli.tasks.sparse_coding import SyntheticSparseCoding


class ZeroCodes(torch.nn.Module):
    """A sparse-coding model without the ``lam`` the task's baselines need."""

    def __init__(self, A, layers):
        super().__init__()
        self.layers, self.n = layers, A.shape[1]
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, y, depth=None):
        return [self.scale * torch.zeros(len(y), self.n)] * (depth or self.layers)


class TwoDictionaries(torch.nn.Module):
    """DenSaE's shape of model: y = A x + B u, with image atoms A and a dense B."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.A = torch.randn(6, 1, 3, 3, generator=generator)
        self.B = torch.randn(9, 5, generator=generator)

    def dictionaries(self):
        return {"A": self.A, "B": self.B}


def test_a_model_without_what_the_task_needs_is_refused_before_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    cfg.trusted_packages = ["test_protocols"]
    cfg.model = {"_target_": "test_protocols.ZeroCodes", "name": "zero", "task": "sparse_coding", "layers": 2}
    with pytest.raises(ConfigError, match=r"^model=zero lacks what sparse_coding data needs of a model: "
                                          r"lam \(the baselines' threshold\)$"):
        run(cfg, tmp_path)
    assert not (tmp_path / "history.csv").exists()


class OlderTask(SyntheticSparseCoding):
    """A user's own task written before tasks stated their data source."""

    def __getattribute__(self, name):
        if name == "data_source":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_a_task_without_a_member_of_the_protocol_is_refused_before_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    cfg.trusted_packages = ["test_protocols"]
    cfg.data._target_ = "test_protocols.OlderTask"
    with pytest.raises(ConfigError, match=r"^data._target_=test_protocols.OlderTask lacks what a task provides: "
                                          r"data_source \(the Task protocol"):
        run(cfg, tmp_path)
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "metrics.json").exists()


def pairwise(columns: np.ndarray) -> float:
    return max(abs(columns[:, i] @ columns[:, j]) / np.linalg.norm(columns[:, i]) / np.linalg.norm(columns[:, j])
               for i, j in itertools.permutations(range(columns.shape[1]), 2))


def test_several_dictionaries_are_saved_drawn_and_measured_by_name(tmp_path):
    model = TwoDictionaries()
    write_dictionaries(model, RunRecorder(tmp_path, tensorboard=False), "densae")
    assert np.array_equal(np.load(tmp_path / "dictionary_A.npy"), model.A.numpy())
    assert np.array_equal(np.load(tmp_path / "dictionary_B.npy"), model.B.numpy())
    assert (tmp_path / "figures/atoms_A.png").is_file() and not (tmp_path / "figures/atoms_B.png").exists()
    assert not (tmp_path / "dictionary.npy").exists()
    metrics = Coherence().measure(model)
    assert metrics == pytest.approx({"dictionary_A": pairwise(model.A.reshape(6, -1).numpy().T),
                                     "dictionary_B": pairwise(model.B.numpy())})
    assert set(Coherence().tables(model)) == {"coherence_A.csv", "coherence_B.csv"}
