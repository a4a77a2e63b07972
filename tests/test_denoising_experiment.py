"""The PUDLE denoising experiment end to end: its published table beside each run, the gradient x
lambda pivot of a sweep, and a trained dictionary evaluated again."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg, read_metrics
from test_denoising_task import folders  # noqa: F401  (the fixture: tiny train and test folders)
from unroll_cli.report.aggregate import main as report_main
from unroll_cli.errors import ConfigError
from unroll_cli.run import build_task, run

TINY_RECIPE = ["data.crop=16", "model.filters=4", "model.kernel_size=5", "model.stride=2", "model.layers=3",
               "trainer.max_epochs=1", "trainer.progress=false", "tensorboard=false"]


def recipe(folders, *overrides):  # noqa: F811
    train_dir, test_dir, _, _ = folders
    return compose_cfg(["+experiment=tolooshams2022_denoise", f"data.train_dir={train_dir}",
                        f"data.test_dir={test_dir}", *TINY_RECIPE, *overrides])


def test_a_sweep_shows_the_published_table_beside_its_runs_and_pivots_it(folders, tmp_path, one_thread):  # noqa: F811
    """Tolooshams & Ba 2022, sigma 25, lam 0.16: g_dec 25.25 dB, g_ae-ls 25.63 dB."""
    for job, grad in enumerate(["g_dec", "g_ae_ls"]):
        overrides = [f"model.grad={grad}", "model.lam=0.16"]
        run(recipe(folders, *overrides), tmp_path / str(job), overrides)
        metrics = read_metrics(tmp_path / str(job))["metrics"]
        assert metrics["published/test/psnr"] == {"g_dec": 25.25, "g_ae_ls": 25.63}[grad]
        assert "Published test/psnr" in (tmp_path / str(job) / "results.md").read_text()
    assert report_main([str(tmp_path), "--pivot", "model.grad", "model.lam"]) == 0
    pivot = pd.read_csv(tmp_path / "report_pivot.csv")
    published = dict(zip(pivot["model.grad"], pivot["published"]))
    assert published == {"g_dec": 25.25, "g_ae_ls": 25.63}
    assert pivot["published authors_log"].notna().all()  # the authors' logged final values beside
    assert np.allclose(pivot["diff authors_log"], pivot["mean"] - pivot["published authors_log"])
    for job, grad in enumerate(["g_dec", "g_ae_ls"]):
        psnr = read_metrics(tmp_path / str(job))["metrics"]["test/psnr"]
        assert pivot.loc[pivot["model.grad"] == grad, "mean"].item() == pytest.approx(psnr)


AUTHORS_RUNS = {("soft", "g_dec", lam): f"g_dec_lamp{digits}" for lam, digits in
                ((0.08, "08"), (0.12, "12"), (0.16, "16"), (0.2, "2"), (0.24, "24"))}
AUTHORS_RUNS.update({("soft", "g_ae_ls", lam): name.replace("g_dec", "g_aels") for (_, _, lam), name
                     in AUTHORS_RUNS.items()})
AUTHORS_RUNS.update({("hard", "g_ae_ls", lam): f"g_aels_htp{digits}" for lam, digits in
                     ((0.2, "02"), (0.5, "05"), (0.8, "08"), (1.0, "1"))})  # threshold lam x step 0.1


def test_each_run_finds_the_final_value_of_the_authors_committed_log_of_its_settings(folders):  # noqa: F811
    """The paper config's authors_log, against the last row of the authors' committed per-epoch log (the
    shared data folder; skipped without it)."""
    log = Path(__file__).parents[2] / "shared" / "data" / "pudle" / "committed_curves.csv"
    if not log.is_file():
        pytest.skip("the authors' committed curves are not in the shared data folder")
    final = pd.read_csv(log).set_index("epoch").loc[400]
    for (threshold, grad, lam), name in AUTHORS_RUNS.items():
        cfg = recipe(folders, f"model.threshold={threshold}", f"model.grad={grad}", f"model.lam={lam}")
        logged = cfg.paper.references.authors_log.psnr.sigma25[cfg.paper.variant]
        assert logged == pytest.approx(final[f"{name}:test_psnr"], abs=5e-4), name


def test_a_hard_threshold_run_has_the_authors_logged_value_and_no_published_one(folders, tmp_path,  # noqa: F811
                                                                                 one_thread):
    overrides = ["model.threshold=hard", "model.lam=0.5"]
    run(recipe(folders, *overrides), tmp_path, overrides)
    metrics = read_metrics(tmp_path)["metrics"]
    assert "published/test/psnr" not in metrics and "published/test/psnr authors_log" in metrics
    results = (tmp_path / "results.md").read_text()
    assert "Published test/psnr" not in results
    assert "Reference authors_log test/psnr (sigma25, hard_g_ae_ls@0.5): 25.40" in results


def test_a_trained_dictionary_evaluates_again_to_the_same_psnr(folders, tmp_path, one_thread,  # noqa: F811
                                                                caplog):
    run(recipe(folders), tmp_path / "trained")
    again = recipe(folders, f"model.dictionary_path={tmp_path / 'trained' / 'dictionary.npy'}",
                   "trainer.max_epochs=0")
    with caplog.at_level("INFO"):
        run(again, tmp_path / "evaluated")
    entries = np.load(tmp_path / "trained" / "dictionary.npy").size  # the model's one trainable tensor
    assert f"nothing to train ({entries} trainable parameters, 0 epochs)" in caplog.text
    trained, evaluated = (pd.read_csv(tmp_path / name / "items.csv") for name in ("trained", "evaluated"))
    np.testing.assert_allclose(evaluated["psnr"], trained["psnr"], rtol=1e-6)


def test_a_short_run_on_real_images_denoises_beyond_the_noisy_input(tmp_path, one_thread):
    """On BSD images (the shared data folder; skipped without it), a few hundred steps of the paper's
    model already raise the test PSNR above that of the noisy input."""
    shared = Path(__file__).parents[2] / "shared" / "data"
    if not (shared / "BSD68").is_dir() or not (shared / "CBSD432").is_dir():
        pytest.skip("BSD68 / CBSD432 not found beside the project")
    cfg = compose_cfg(["+experiment=tolooshams2022_denoise_cpu_short", f"data.train_dir={shared / 'CBSD432'}",
                       f"data.test_dir={shared / 'BSD68'}", "data.n_train=16", "data.n_test=1", "optim.lr=1e-3",
                       "trainer.max_epochs=4", "trainer.progress=false", "tensorboard=false"])
    run(cfg, tmp_path)
    metrics = read_metrics(tmp_path)["metrics"]
    assert metrics["test/psnr"] > metrics["test/psnr_input"] + 0.3


def test_the_experiment_scores_the_full_test_images_and_results_say_so(folders, tmp_path, one_thread):  # noqa: F811
    """PUDLE's published table is on full images (the authors' filters score it there): the experiment
    tests on every test image whole, and results.md's title and headline table name the protocol."""
    _, _, _, test_images = folders
    task = build_task(recipe(folders), torch.device("cpu"))
    assert sorted(tuple(image.shape) for image in task.test_clean) == sorted(i.shape for i in test_images.values())
    for extra, protocol in (([], f"{len(test_images)} full test images"),
                            (["data.test_crop=12"], f"one 12x12 window of each of {len(test_images)} test images")):
        run(recipe(folders, *extra), tmp_path / str(len(extra)))
        title, _, text = (tmp_path / str(len(extra)) / "results.md").read_text().partition("\n")
        assert title.endswith(protocol) and f"Protocol: test metrics on {protocol}." in text


def test_a_trained_dictionary_past_the_step_bound_is_evaluated_with_one_warning(folders, tmp_path, one_thread,  # noqa: F811
                                                                                 caplog):
    """Training (the authors' recipe) may carry a dictionary past step * ||D||^2 < 2: loaded, it is
    evaluated as it is; the same step from a fresh start is still refused."""
    run(recipe(folders), tmp_path / "trained")
    dictionary = np.load(tmp_path / "trained" / "dictionary.npy")
    np.save(tmp_path / "scaled.npy", 10 * dictionary)  # ||D||^2 x 100: far past 2 / step
    with caplog.at_level("WARNING"):
        run(recipe(folders, f"model.dictionary_path={tmp_path / 'scaled.npy'}", "trainer.max_epochs=0"),
            tmp_path / "evaluated")
    assert read_metrics(tmp_path / "evaluated")["status"] == "completed"
    warnings = [r.message for r in caplog.records if "step * ||D||^2" in r.getMessage()]
    assert len(warnings) == 1
    with pytest.raises(ConfigError, match="the encoder diverges"):
        run(recipe(folders, "model.step=1000"), tmp_path / "fresh")
