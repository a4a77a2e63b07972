"""scripts/pudle_curves.py: a run's test PSNR per epoch beside the authors' log of the same estimator
and lambda, on a written-out log and run directory."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

SCRIPT = Path(__file__).parents[1] / "scripts" / "pudle_curves.py"


@pytest.mark.parametrize("model, column", [
    ({"grad": "g_ae_ls", "lam": 0.16, "step": 0.1, "threshold": "soft"}, "g_aels_lamp16"),
    ({"grad": "g_dec", "lam": 0.2, "step": 0.1, "threshold": "soft"}, "g_dec_lamp2"),
    ({"grad": "g_dec", "lam": 0.08, "step": 0.1, "threshold": "soft"}, "g_dec_lamp08"),
    # a hard threshold is named by its value lam x step: 0.5 x 0.1 = 0.05, and 1.0 x 0.1 = 0.1
    ({"grad": "g_ae_ls", "lam": 0.5, "step": 0.1, "threshold": "hard"}, "g_aels_htp05"),
    ({"grad": "g_ae_ls", "lam": 1.0, "step": 0.1, "threshold": "hard"}, "g_aels_htp1"),
])
def test_a_run_is_compared_with_the_authors_run_of_its_estimator_and_lambda(tmp_path, capsys, model, column):
    epochs = np.arange(0, 11)
    authors = pd.DataFrame({"epoch": epochs, f"{column}:test_psnr": 20 + 0.3 * epochs,
                            "other:test_psnr": np.zeros(11)})
    authors.to_csv(tmp_path / "log.csv", index=False)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": model, "data": {"loss_reduction": "sum"}}))
    ours = 21 + 0.25 * epochs[1:6]  # 5 epochs: 21.25 .. 22.25 against 20.3 .. 21.5
    pd.DataFrame({"epoch": epochs[1:6], "test/psnr": ours}).to_csv(run / "history.csv", index=False)
    argv = sys.argv
    sys.argv = ["pudle_curves.py", str(tmp_path / "log.csv"), str(run), "--out", str(tmp_path / "c.png")]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    differences = ours - (20 + 0.3 * epochs[1:6])  # 0.95 at epoch 1, falling to 0.75 at epoch 5
    assert f"against the authors' {column}" in out
    assert f"largest difference {differences.max():+.2f} dB at epoch 1" in out
    assert f"final (epoch 5): ours {ours[-1]:.2f}, theirs {20 + 0.3 * 5:.2f} dB" in out
    summary = out.splitlines()[-3]  # the summary table's row of this run
    cells = [cell.strip() for cell in summary.strip("|").split("|")]
    assert cells[1:3] == [column, "sum"]
    expected = [5, ours[-1], 20 + 0.3 * 5, differences[-1], differences.max(), 1]
    assert [float(cell) for cell in cells[3:]] == pytest.approx(expected, abs=0.005)
    assert (tmp_path / "c.png").stat().st_size > 0
