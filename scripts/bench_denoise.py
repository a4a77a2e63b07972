"""Training and evaluation speed of the convolutional sparse autoencoder (not a test).

The PUDLE denoising recipe (Tolooshams & Ba 2022): 64 filters 9x9, stride 4, T=15 ISTA steps, step
0.1, two-sided soft threshold, g_ae_ls, Adam, batch 1 of 129x129 crops; evaluation on one full
481x321 image. Beside ``model=sparse_ae`` (``SparseAutoencoder``), a plain PyTorch rendering of the
same equations written the way the authors' ``CAE`` is written (``conv2d`` / ``conv_transpose2d``
per step, the residual recomputed every step), timed in the same rounds (``bench_timing``). Prints
training crops/s, the ratio to the plain rendering, evaluation seconds per image, and what a full
400-epoch recipe over the 432 CBSD432 crops would take (training only, and with the per-epoch test
on the 68 BSD68 images).

    python scripts/bench_denoise.py [--device auto|cpu|cuda] [--threads N] [--reps 20]
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from bench_timing import interleaved_times, parse_common
from unroll_cli.models.autoencoders import SparseAutoencoder

RECIPE = dict(layers=15, lam=0.16, step=0.1, filters=64, kernel_size=9, stride=4, two_sided=True, grad="g_ae_ls")
EPOCHS, TRAIN_IMAGES, TEST_IMAGES = 400, 432, 68


class PlainCAE(torch.nn.Module):
    """The authors' ``CAE`` forward (first step outside the loop, then T-1 steps), for comparison."""

    def __init__(self, weight: torch.Tensor, layers: int, lam: float, step: float, stride: int):
        super().__init__()
        self.W = torch.nn.Parameter(weight.clone())
        self.layers, self.threshold, self.step, self.stride = layers, lam * step, step, stride

    def shrink(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sign(z) * F.relu(z.abs() - self.threshold)

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = F.conv_transpose2d(z, self.W, stride=self.stride)
        return F.pad(out, (0, x.shape[-1] - out.shape[-1], 0, x.shape[-2] - out.shape[-2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.shrink(self.step * F.conv2d(x, self.W, stride=self.stride))
        for _ in range(self.layers - 1):
            residual = self.decode(z, x) - x
            z = self.shrink(z - self.step * F.conv2d(residual, self.W, stride=self.stride))
        return self.decode(z, x)


def training_step(model: torch.nn.Module, optimizer, crop: torch.Tensor, last) -> callable:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = 0.5 * (last(model(crop)) - crop).pow(2).sum()
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    args, device = parse_common(__doc__, device="auto")
    torch.manual_seed(0)
    ours = SparseAutoencoder(in_channels=1, **RECIPE).to(device)
    plain = PlainCAE(ours.weight.detach(), RECIPE["layers"], RECIPE["lam"], RECIPE["step"], RECIPE["stride"]).to(device)
    crop = torch.rand(1, 1, 129, 129, device=device)
    image = torch.rand(1, 1, 321, 481, device=device)
    with torch.no_grad():  # the same equations: the same output
        gap = (ours(image)[-1] - plain(image)).abs().max().item()
    print(f"device {device}, threads {torch.get_num_threads()}; max |ours - plain| on a full image: {gap:.2e}")

    steps = {"sparse_ae": training_step(ours, torch.optim.Adam(ours.parameters(), 1e-4, eps=1e-3), crop, lambda o: o[-1]),
             "plain": training_step(plain, torch.optim.Adam(plain.parameters(), 1e-4, eps=1e-3), crop, lambda o: o)}
    train = {k: statistics.median(v) for k, v in interleaved_times(steps, device, args.reps, 3).items()}

    @torch.no_grad()
    def evaluate(model, last):
        return lambda: last(model.eval()(image))

    evals = {"sparse_ae": evaluate(ours, lambda o: o[-1]), "plain": evaluate(plain, lambda o: o)}
    test = {k: statistics.median(v) for k, v in interleaved_times(evals, device, max(3, args.reps // 4), 1).items()}
    for name in ("sparse_ae", "plain"):
        epoch = TRAIN_IMAGES * train[name]
        print(f"{name:>9}: {1 / train[name]:7.1f} training crops/s ({train[name] * 1e3:.1f} ms/step), "
              f"{test[name]:.3f} s per full test image; 400 epochs: {EPOCHS * epoch / 3600:.1f} h training, "
              f"{EPOCHS * (epoch + TEST_IMAGES * test[name]) / 3600:.1f} h with the per-epoch test")
    print(f"training speed-up over the plain rendering: {train['plain'] / train['sparse_ae']:.2f}x; "
          f"evaluation: {test['plain'] / test['sparse_ae']:.2f}x")


if __name__ == "__main__":
    main()
