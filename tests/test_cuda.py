"""The GPU path, against the CPU and explicit references (skipped where no CUDA device is visible).

The CPU takes other kernels than the GPU for the same layers (support selection on the host,
the fused thresholds), so each model's CUDA forward and gradients are compared with its CPU ones
in float64; training with the steps replayed as CUDA graphs must reach the same weights as eager
training; and the CLI is run with ``device=cuda``, plain, in bf16, compiled and with CUDA graphs.
"""
from __future__ import annotations

import pytest
import torch

from conftest import TINY, read_metrics, run_cli
from test_lista_models import all_models, problem, shrink_ss_rows
from test_mlista_models import CLASSES, image, randomize
from unroll_cli.models.prox import support_selection_threshold
from unroll_cli.run import run
from unroll_cli.train.checkpoints import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("percent", [1.2, 6.0, 13.0])
def test_support_selection_on_the_gpu_equals_the_row_loop(percent):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 500, dtype=torch.float64, generator=g)
    for theta in (0.05, 1.0, 3.0):  # crowded rows, both kinds, hardly any entry above theta
        expected = shrink_ss_rows(z, theta, percent)
        theta_on_gpu = torch.tensor(theta, dtype=z.dtype, device=CUDA)
        got = support_selection_threshold(z.to(CUDA), theta_on_gpu, percent)
        torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(all_models(problem()[0])))
def test_lista_family_on_the_gpu_equals_the_cpu_layer_by_layer(name):
    A, y = problem(m=60, n=120, batch=40)
    on_cpu = all_models(A)[name]
    on_gpu = all_models(A)[name].to(CUDA)
    cpu_out, gpu_out = on_cpu(y), on_gpu(y.to(CUDA))
    for a, b in zip(cpu_out, gpu_out, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)
    if list(on_cpu.parameters()):
        cpu_out[-1].square().sum().backward()
        gpu_out[-1].square().sum().backward()
        for (pname, p), q in zip(on_cpu.named_parameters(), on_gpu.parameters(), strict=True):
            torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-9, atol=1e-12, msg=pname)


@pytest.mark.parametrize("cls", CLASSES)
def test_ml_ista_family_on_the_gpu_equals_the_cpu(cls):
    model = randomize(cls("cifar10", in_channels=3, unfoldings=3))
    x = image("cifar10", batch=4)
    torch.testing.assert_close(model.to(CUDA)(x.to(CUDA)).cpu(), model.cpu()(x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("trainer", ["default", "layerwise"])
def test_cuda_graph_training_reaches_the_eager_weights(tiny_cfg, tmp_path, trainer):
    options = ["model=lista_cpss", f"trainer={trainer}", "trainer.max_epochs=2", "optim.lr=2e-3", "tensorboard=false"]
    if trainer == "layerwise":
        options += ["trainer.stage_max_steps=20", "trainer.stage_patience_steps=10"]
    for graphs in ("false", "true"):
        run(tiny_cfg(*options, "device=cuda", f"trainer.cuda_graphs={graphs}"), tmp_path / graphs)
    eager, graphed = (load_checkpoint(tmp_path / g / "checkpoints" / "last.pt")["model"]
                      for g in ("false", "true"))
    assert eager.keys() == graphed.keys()
    for name in eager:
        torch.testing.assert_close(graphed[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)
    # every layer starts at the same threshold: unequal ones show that the runs trained
    assert not torch.equal(eager["theta.0"], eager["theta.1"])
    metrics = [read_metrics(tmp_path / g)["metrics"]["test/nmse_db"] for g in ("false", "true")]
    assert metrics[1] == pytest.approx(metrics[0], abs=1e-3)


@pytest.mark.parametrize("options", [[], ["trainer.precision=bf16"], ["trainer.compile=true"],
                                     ["trainer.cuda_graphs=true"],
                                     ["trainer.cuda_graphs=true", "trainer.precision=bf16"]])
def test_the_cli_trains_on_the_gpu(tmp_path, options):
    run_dir = tmp_path / "run"
    result = run_cli([*TINY, "model=lista_cpss", "device=cuda", "trainer.max_epochs=3",
                      "trainer.steps_per_epoch=30", "optim.lr=2e-3", *options, f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = read_metrics(run_dir)
    assert record["status"] == "completed" and record["device"].startswith("cuda")
    metrics = record["metrics"]
    assert metrics["test/nmse_db"] < metrics["baseline/ista/test/nmse_db"] - 0.5


def test_callbacks_run_after_every_step_replayed_as_a_cuda_graph(tiny_cfg, tmp_path):
    from test_callbacks import Recording

    recording = Recording()
    run(tiny_cfg("device=cuda", "trainer.cuda_graphs=true", "model=lista_cp", "tensorboard=false"), tmp_path,
        callbacks={"rec": recording})
    assert recording.steps == list(range(1, 2 * 5 + 1))  # TINY: 2 epochs of 5 steps, each one replayed
    assert len(recording.validations) == read_metrics(tmp_path)["epochs"] == 2
