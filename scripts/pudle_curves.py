"""PUDLE's test PSNR curves beside the authors' committed training logs: a table and a figure.

    python scripts/pudle_curves.py AUTHORS_CSV RUN_DIR [RUN_DIR ...] [--out curves.png]

``AUTHORS_CSV`` is the authors' per-epoch log of the denoising table (``committed_curves.csv``: for
each of their runs ``<grad>_<lamp16 | htp05>``, a column ``:test_psnr`` from epoch 0, before training).
Each run directory (``+experiment=tolooshams2022_denoise``; its ``.hydra/config.yaml`` and
``history.csv``) is matched with the authors' run of the same estimator (``model.grad``: g_dec, or
g_ae_ls as ``g_aels``) and lambda (``lamp<digits after 0.>``; with ``model.threshold=hard``, ``htp`` and
the threshold lam x step, as the authors name their hard-threshold runs: lam 0.5 at step 0.1 is ``htp05``).
Printed per run: the test PSNR of both at epochs 1, 2, 5, 10, 20, 50, 100, 200 and 400 (those the run
has), the largest difference over the epochs both have, and the final values; then one summary table of
all runs. The figure has a panel per authors' run: their log dashed, and each run of ours solid, named
by its loss (``data.loss_reduction``: ``pixel_mean`` trains as the authors did, ``sum`` is
``tolooshams2022_denoise_ours``).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

EPOCHS = (1, 2, 5, 10, 20, 50, 100, 200, 400)
GRADS = {"g_dec": "g_dec", "g_ae_ls": "g_aels"}


def authors_run(config: dict) -> str:
    """The authors' run name of a run's config: ``g_aels_lamp16``, ``g_dec_lamp2``, ``g_aels_htp05``."""
    model = config["model"]
    hard = model.get("threshold") == "hard"  # the authors name a hard threshold by its value, lam x step
    value = round(model["lam"] * model["step"], 6) if hard else model["lam"]
    digits = format(value, "g").split(".")[1]  # 0.16 -> 16, 0.2 -> 2, 0.08 -> 08
    return f"{GRADS[model['grad']]}_{'htp' if hard else 'lamp'}{digits}"


def curves(authors: pd.DataFrame, run_dir: Path) -> tuple[str, str, pd.DataFrame]:
    """(the authors' run name, the run's loss, a frame of epoch, ours, theirs, difference) over the
    epochs both have."""
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    name = authors_run(config)
    ours = pd.read_csv(run_dir / "history.csv")[["epoch", "test/psnr"]].rename(columns={"test/psnr": "ours"})
    theirs = authors[["epoch", f"{name}:test_psnr"]].rename(columns={f"{name}:test_psnr": "theirs"})
    both = ours.merge(theirs, on="epoch")
    loss = config.get("data", {}).get("loss_reduction", "unrecorded")
    return name, loss, both.assign(difference=both["ours"] - both["theirs"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("authors", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("pudle_curves.png"))
    args = parser.parse_args(argv)
    authors = pd.read_csv(args.authors)
    compared = [(run_dir, *curves(authors, run_dir)) for run_dir in args.runs]
    summary = []
    for run_dir, name, loss, both in compared:
        shown = both[both["epoch"].isin(EPOCHS)].round(2)
        largest = both.loc[both["difference"].abs().idxmax()]
        final = both.iloc[-1]
        print(f"\n{run_dir} ({loss}) against the authors' {name}:\n")
        print(shown.to_markdown(index=False))
        print(f"\nlargest difference {largest['difference']:+.2f} dB at epoch {int(largest['epoch'])}; final "
              f"(epoch {int(final['epoch'])}): ours {final['ours']:.2f}, theirs {final['theirs']:.2f} dB")
        summary.append({"run": str(run_dir), "authors' run": name, "loss": loss, "epoch": int(final["epoch"]),
                        "ours": round(final["ours"], 2), "theirs": round(final["theirs"], 2),
                        "difference": round(final["difference"], 2),
                        "largest difference": round(largest["difference"], 2),
                        "at epoch": int(largest["epoch"])})
    print("\n" + pd.DataFrame(summary).to_markdown(index=False))
    names = list(dict.fromkeys(name for _, name, _, _ in compared))
    columns = min(len(names), 4)
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, squeeze=False, sharex=True, figsize=(4 * columns, 3 * rows))
    for ax, name in zip(axes.flat, names):
        ax.plot(authors["epoch"], authors[f"{name}:test_psnr"], "--", color="black", label="the authors' log")
        for _, _, loss, both in (c for c in compared if c[1] == name):
            ax.plot(both["epoch"], both["ours"], label=f"ours, {loss}")
        ax.set(title=name, xlabel="epoch", ylabel="test PSNR (dB)")
        ax.legend(fontsize="small")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    figure.suptitle("PUDLE: test PSNR per epoch on the full BSD68 images, sigma 25")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
