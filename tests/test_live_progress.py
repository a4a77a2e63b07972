"""What a running or finished run tells its user: progress lines inside an epoch or stage (no
terminal) or a bar (a terminal), TensorBoard scalars against the global step (also across a
resume) with the per-layer curve, and where the data came from."""
from __future__ import annotations

import io
import re
import sys

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_cfg, run_cli
from test_denoising_task import folders  # noqa: F401  (the fixture: tiny train and test folders)
from test_image_data import make_idx_set
from unroll_cli.run import run
from unroll_cli.train import progress
from unroll_cli.train.trainer import CHECK_EVERY, Trainer

STEPS = 2 * CHECK_EVERY  # steps per epoch: two loss read-backs in each
LAYERWISE = ["trainer=layerwise", "model.layers=1", "trainer.val_every_steps=5", "trainer.stage_patience_steps=1000",
             f"trainer.stage_max_steps={STEPS + 5}"]  # every stage runs to its bound, read back twice


class Terminal(io.StringIO):
    """A stand-in for a terminal's stderr, where tqdm draws its bars."""

    def isatty(self) -> bool:
        return True


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress.__name__]


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of the run as (step, value), as TensorBoard shows them."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def steps(events, tag: str) -> list[int]:
    return [step for step, _ in events[tag]]


# ----------------------------------------------------------------------------- progress inside an epoch
@pytest.fixture
def no_terminal(monkeypatch):
    """stderr is not a terminal (a log file, a sweep) and a progress line is due at every read-back."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)


def test_without_a_terminal_an_epoch_logs_its_step_running_loss_and_rate(tiny_cfg, tmp_path, no_terminal, caplog,
                                                                           one_thread):
    with caplog.at_level("INFO"):
        run(tiny_cfg("trainer.progress=true", f"trainer.steps_per_epoch={STEPS}"), tmp_path)
    lines = progress_lines(caplog)
    expected = [f"epoch {e}/2: step {k}/{STEPS}" for e in (1, 2) for k in (CHECK_EVERY, STEPS)]
    assert [line.split(", loss")[0] for line in lines] == expected
    # the line at the epoch's last step holds the epoch's mean loss, as history.csv does
    history = pd.read_csv(tmp_path / "history.csv")
    for line, loss in zip(lines[1::2], history["train/loss"]):
        assert float(re.search(r"loss (\S+) \(mean so far\)", line)[1]) == pytest.approx(loss, rel=1e-4)
        rate = re.search(r", (\S+) steps/s$", line)
        assert rate and float(rate[1]) > 0


def test_without_a_terminal_a_stage_logs_its_progress_and_trainer_progress_false_silences_it(
        tiny_cfg, tmp_path, no_terminal, caplog, one_thread):
    with caplog.at_level("INFO"):
        run(tiny_cfg("trainer.progress=true", *LAYERWISE, "tensorboard=false"), tmp_path / "shown")
    expected = [f"layer 1 stage {stage}: step {k} (at most {STEPS + 5})"
                for stage in (0, 1, 2) for k in (CHECK_EVERY, STEPS)]
    assert [line.split(", loss")[0] for line in progress_lines(caplog)] == expected
    caplog.clear()
    with caplog.at_level("INFO"):
        run(tiny_cfg("trainer.progress=false", *LAYERWISE, "tensorboard=false"), tmp_path / "silent")
    assert progress_lines(caplog) == []


# one bar over the run's steps (end to end, 2 epochs), a bar over each stage's steps under the stages' bar
@pytest.mark.parametrize("trainer, drawn", [
    ([f"trainer.steps_per_epoch={STEPS}"], [f"{CHECK_EVERY}/{2 * STEPS}", "epoch 1/2, loss", "epoch 2/2, loss"]),
    (LAYERWISE, ["0/3", f"{STEPS}step", "layer 1 stage 0, loss", "layer 1 stage 2, loss"])], ids=["epochs", "stages"])
def test_on_a_terminal_a_bar_counts_the_steps_and_no_line_is_logged(tiny_cfg, tmp_path, monkeypatch, caplog,
                                                                    one_thread, trainer, drawn):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level("INFO"):
        run(tiny_cfg("trainer.progress=true", *trainer, "tensorboard=false"), tmp_path)
    assert all(text in terminal.getvalue() for text in drawn)
    assert progress_lines(caplog) == []


# ----------------------------------------------------------------------------- TensorBoard
def test_tensorboard_holds_step_losses_epochs_and_the_per_layer_curve(tiny_cfg, tmp_path, one_thread):
    run(tiny_cfg(f"trainer.steps_per_epoch={STEPS}", "trainer.max_epochs=3"), tmp_path)
    events = scalars(tmp_path)
    assert steps(events, progress.STEP_LOSS) == [CHECK_EVERY * k for k in range(1, 7)]  # every read-back
    for tag in ("train/loss", "val/nmse_db"):  # each epoch, at the global step it ends on
        assert steps(events, tag) == [STEPS, 2 * STEPS, 3 * STEPS]
    # an epoch's mean loss is the mean of its two read-back windows
    windows = [value for _, value in events[progress.STEP_LOSS]]
    epochs = [value for _, value in events["train/loss"]]
    assert epochs == pytest.approx([np.mean(windows[i:i + 2]) for i in (0, 2, 4)], rel=1e-5)
    layers = pd.read_csv(tmp_path / "layers.csv")
    for column in ("test/nmse_db", "baseline/ista/test/nmse_db", "baseline/fista/test/nmse_db"):
        curve = events[f"per_layer/{column}"]
        assert [step for step, _ in curve] == list(layers["layer"])  # the layer is the step: 0..T
        assert [value for _, value in curve] == pytest.approx(layers[column].tolist(), abs=1e-4)


def test_layerwise_stages_are_written_at_the_global_step_they_end_on(tiny_cfg, tmp_path, one_thread):
    run(tiny_cfg(*LAYERWISE), tmp_path)
    events, stage = scalars(tmp_path), STEPS + 5
    assert steps(events, "val/nmse_db") == [stage * k for k in range(1, 4)]
    assert steps(events, progress.STEP_LOSS) == [stage * i + k for i in range(3) for k in (CHECK_EVERY, STEPS)]


def test_a_resumed_run_continues_the_global_step_in_its_new_directory(tiny_cfg, tmp_path, one_thread):
    common = (f"trainer.steps_per_epoch={STEPS}",)
    run(tiny_cfg(*common, "trainer.max_epochs=2"), tmp_path / "first")
    run(tiny_cfg(*common, "trainer.max_epochs=4", f"resume={tmp_path / 'first'}"), tmp_path / "resumed")
    events = scalars(tmp_path / "resumed")
    assert steps(events, "train/loss") == [3 * STEPS, 4 * STEPS]
    assert steps(events, progress.STEP_LOSS) == [2 * STEPS + CHECK_EVERY * k for k in range(1, 5)]


def test_an_interrupted_run_resumed_in_place_shows_each_step_once(tiny_cfg, tmp_path, monkeypatch, one_thread):
    """Stopped in epoch 2 after a read-back: the resumed attempt redoes that epoch, and TensorBoard
    shows its steps once, the resumed attempt's values (the interrupted one's are purged)."""
    cfg = (f"trainer.steps_per_epoch={STEPS}", "trainer.max_epochs=3")
    original = Trainer.train_step

    def interrupted_step(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.global_step == STEPS + CHECK_EVERY + 1:
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*cfg), tmp_path)
    assert steps(scalars(tmp_path), progress.STEP_LOSS) == [CHECK_EVERY, STEPS, STEPS + CHECK_EVERY]
    monkeypatch.setattr(Trainer, "train_step", original)
    run(tiny_cfg(*cfg, f"resume={tmp_path}"), tmp_path)
    events = scalars(tmp_path)
    assert steps(events, progress.STEP_LOSS) == [CHECK_EVERY * k for k in range(1, 7)]
    assert steps(events, "train/loss") == [STEPS, 2 * STEPS, 3 * STEPS]
    history = pd.read_csv(tmp_path / "history.csv")
    assert [value for _, value in events["train/loss"]] == pytest.approx(history["train/loss"].tolist(), rel=1e-6)


# ----------------------------------------------------------------------------- the data source
def test_the_log_names_how_generated_data_was_drawn(tmp_path, one_thread):
    result = run_cli(["data.m=20", "data.n=40", "data.n_val=64", "data.n_test=64", "model.layers=2",
                      "trainer.max_epochs=1", "trainer.steps_per_epoch=2", "trainer.progress=false",
                      "tensorboard=false", "data.matrix_seed=7", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "run" / "app.log").read_text()
    assert ("data: A drawn by data.matrix_seed=7; training codes drawn by seed=0, validation codes by "
            "data.val_seed=1, test codes drawn by data.test_seed=2") in log


def test_the_log_names_the_folders_file_data_was_read_from(folders, tmp_path, caplog, one_thread):  # noqa: F811
    train_dir, test_dir, _, _ = folders
    make_idx_set(tmp_path / "images" / "MNIST" / "raw", np.random.default_rng(0), gz=True)
    runs = {"denoise": ["data=bsd_denoise", f"data.train_dir={train_dir}", f"data.test_dir={test_dir}",
                        "model=sparse_ae", "data.crop=16", "model.filters=4", "model.kernel_size=5", "model.layers=2"],
            "mnist": ["data=mnist", f"data.root={tmp_path / 'images'}", "data.download=false", "model=cnn"]}
    with caplog.at_level("INFO"):
        for name, overrides in runs.items():
            run(compose_cfg([*overrides, "trainer.max_epochs=0", "tensorboard=false"]), tmp_path / name)
    assert f"data: training images from {train_dir.resolve()}, test images from {test_dir.resolve()}" in caplog.text
    assert f"data: mnist from {(tmp_path / 'images' / 'MNIST' / 'raw').resolve()}" in caplog.text
