"""``fastgan train`` and ``fastgan sample``.

fastgan train [--config FILE.yaml] [--preset NAME] [--dataset NAME] [--steps N] [--out DIR] [--resume]
              [--device D] [--impl I] [--set key=value ...]

Without --preset / --config the preset follows the data set (toy-ring8, toy-grid25, else dcgan-mnist).
The run directory gets samples/step_XXXXXX.png (toy data: a scatter PNG and the points as .npy),
checkpoints/last.pt (+ its .prev.pt and periodic step_XXXXXX.pt), metrics.jsonl, events.jsonl (failure
watch), losses.png and config.yaml.  --resume continues from DIR/checkpoints/last.pt (else the newest
readable older one) with the checkpoint's own configuration: only run / monitor options (not
run.batch_size or run.seed), --impl and --device may change.  A new run in a DIR that holds one is
refused unless --overwrite.  Exit codes: 0 done, 2 bad configuration / data / checkpoint / run directory,
3 stopped on NaN / Inf, 4 out of memory (with a hint), 130 interrupted (Ctrl-C or SIGTERM: stopped after
the step in progress, which is saved).

fastgan sample CHECKPOINT --n N --out PATH: N samples from a checkpoint's generator (EMA weights when the
run kept them): toy data -> .npy (or a .png scatter); images -> a PNG grid (PATH.png), an .npy array in
[-1, 1], or a folder of PNGs (any other PATH).
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys

TRAIN_EXAMPLES = """examples:
  fastgan train --preset dcgan-mnist --steps 300 --out runs/dcgan
  fastgan train --preset toy-ring8 --steps 2000 --out runs/ring8
  fastgan train --preset wgan-gp-mnist --set tricks.ema=0.999 --set model.ndf=64
  fastgan train --preset dcgan-mnist --set label_smoothing=0.1 instance_noise=0.1 --impl ref
  fastgan train --out runs/dcgan --resume --steps 600
  fastgan train --list-options          (every option, its default, doc and source; * = a trick)
"""

#: options that may change when resuming (everything else comes from the checkpoint)
RESUME_MUTABLE_SECTIONS = ("run", "monitor")
RESUME_MUTABLE_KEYS = ("model.impl",)
RESUME_LOCKED_KEYS = ("run.batch_size", "run.seed")


def _err(prog: str, message: str) -> None:
    for line in str(message).splitlines() or [""]:
        print(f"{prog}: error: {line}", file=sys.stderr)


def _flag_overrides(args) -> dict:
    return {"data.dataset": args.dataset, "run.steps": args.steps, "run.out": args.out, "run.device": args.device,
            "model.impl": args.impl, "run.batch_size": args.batch_size, "run.seed": args.seed,
            "data.image_size": args.image_size, "data.root": args.root,
            "data.download": True if args.download else None,
            "run.progress": False if args.no_progress else None, "run.threads": args.threads}


def _sets(args) -> list:
    out = []
    for group in args.set or ():
        out += group
    return out


def _resume_config(args, cfg, state):
    """The checkpoint's configuration with the explicitly given run / monitor options (and impl) applied."""
    from .config import (PRESETS, ConfigError, TrainConfig, apply_overrides, coerce_option, flatten, parse_set,
                         read_yaml, resolve_key)

    base = TrainConfig.from_dict(state["config"])
    explicit = {}
    errors = []
    if args.config or args.preset:
        # what the file / preset given with --resume sets says what the run is: the values that differ from the
        # checkpoint's are applied where they may change and refused where they may not, as flags are (options
        # they leave at a default are not compared: a default may have changed since the run started)
        file_data = read_yaml(args.config) if args.config else {}
        preset = args.preset or file_data.get("preset") or file_data.get("base")
        saved_preset = state["config"].get("preset")
        if preset is not None and preset != "none" and preset != saved_preset:
            errors.append(f"preset {preset!r}: the run was trained with preset {saved_preset!r}; the preset cannot "
                          "change when resuming (start a new run in another --out)")
        keys = {resolve_key(k) for k, _ in flatten(file_data, where=args.config or "config")}
        if preset in PRESETS:
            keys |= {resolve_key(k) for k, _ in flatten(PRESETS[preset], where=f"preset {preset}")}
        for key in sorted(keys - {"run.out"}):
            section, name = key.split(".", 1)
            given, saved = getattr(getattr(cfg, section), name), getattr(getattr(base, section), name)
            if given != saved:
                explicit[key] = given
    explicit.update({k: v for k, v in _flag_overrides(args).items() if v is not None})
    explicit.update({resolve_key(k): v for k, v in parse_set(_sets(args)).items()})
    for key in explicit:
        section = key.split(".", 1)[0]
        if key in RESUME_LOCKED_KEYS or (section not in RESUME_MUTABLE_SECTIONS and key not in RESUME_MUTABLE_KEYS):
            current = getattr(getattr(base, section), key.split(".", 1)[1])
            try:  # as the option would hold it: 1e-4 (a string to YAML) is 0.0001, 0 for a float is 0.0
                new = coerce_option(key, explicit[key])
            except ConfigError:  # (a bad value: apply_overrides names it below)
                new = explicit[key]
            if new != current:
                errors.append(f"{key} cannot change when resuming (the checkpoint has {current!r}); "
                              f"start a new run in another --out")
    if errors:
        raise ConfigError(errors)
    apply_overrides(base, {k: v for k, v in explicit.items()}, where="command line")
    base.run.out = cfg.run.out
    base.preset = state["config"].get("preset")
    return base


#: errors writing the run directory that get one line (exit 2) rather than a traceback
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR,
                 errno.EISDIR}


_LOCKS = {}  # run directory -> its open lock file (the lock lasts as long as the process)


def lock_run_directory(out: str):
    """An exclusive lock on ``out`` for this process (``out/.fastgan.lock``): two runs writing one directory
    delete each other's temporary checkpoint files and rotate over each other's checkpoints.  Returns the
    lock file, or a message naming the process holding it.  (No lock where ``fcntl`` is missing: Windows.)"""
    try:
        import fcntl
    except ImportError:
        return None
    key = os.path.abspath(out)
    if key in _LOCKS:
        return _LOCKS[key]
    os.makedirs(out, exist_ok=True)
    f = open(os.path.join(out, ".fastgan.lock"), "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a file system without locks
            f.close()
            print(f"fastgan train: warning: {out} cannot be locked ({exc.strerror}); two runs on it would not be "
                  "told apart", file=sys.stderr)
            return None
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        return (f"{out} is in use by another fastgan train (pid {holder}); wait for it to end, or use "
                "another --out")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _LOCKS[key] = f
    return f


def release_run_directory(out: str) -> None:
    f = _LOCKS.pop(os.path.abspath(out), None)
    if f is not None:
        f.close()  # (closing the file releases the lock)


def run_files(out: str) -> list[str]:
    """What in ``out`` belongs to an earlier run (checkpoints, metrics, configuration), relative to ``out``."""
    from .checkpoint import checkpoint_files

    held = [os.path.relpath(path, out) for path in checkpoint_files(out)][:3]  # (a few: they name the run)
    for name in ("metrics.jsonl", "config.yaml"):
        path = os.path.join(out, name)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            held.append(name)
    return held


def remove_checkpoints(out: str) -> None:
    """--overwrite: an earlier run's checkpoints go (a new run's would otherwise mix with them: its retention
    and --resume pick files by step number); its other files are rewritten by the new run."""
    from .checkpoint import checkpoint_files

    for path in checkpoint_files(out):
        os.unlink(path)


def cmd_train(args) -> int:
    from ..data import DatasetUnavailableError
    from .checkpoint import CheckpointError, find_resume_checkpoint, load_resume_checkpoint
    from .config import ConfigError, describe_options, load_config, preset_names, to_yaml, validate
    from .trainer import Trainer

    prog = "fastgan train"
    if args.list_options:
        print(describe_options())
        return 0
    if args.list_presets:
        from .config import PRESETS

        for name in preset_names():
            p = PRESETS[name]
            print(f"{name:18s} {p.get('data', {}).get('dataset', '')}, loss {p.get('loss', {}).get('loss', '')}")
        return 0
    cfg = trainer = None
    try:
        # (validated below: a resumed run's options against its checkpoint, a new run's in full)
        cfg = load_config(args.config, args.preset, _flag_overrides(args), _sets(args), validate_it=False)
        state = None
        # Under torchrun every rank reads the checkpoint; only rank 0 says so (the process group is not up yet).
        main_rank = os.environ.get("RANK", "0") == "0"
        say = print if main_rank else (lambda *a, **k: None)
        if main_rank and not args.print_config:
            lock = lock_run_directory(cfg.run.out)  # held until this process ends
            if isinstance(lock, str):
                _err(prog, lock)
                return 2
        held = [] if args.print_config else run_files(cfg.run.out)
        if args.resume:
            found = load_resume_checkpoint(cfg.run.out, log=say, quarantine=main_rank)
            if found is None and held and not args.overwrite:
                _err(prog, f"--resume: {cfg.run.out} holds a run ({', '.join(held)}) but no loadable checkpoint; "
                           "pass --overwrite to start a new run there, or another --out")
                return 2
            if found is None:
                say(f"{prog}: nothing to resume under {cfg.run.out}; starting from scratch")
            else:
                path, state = found
                cfg = validate(_resume_config(args, cfg, state), resumed_from=state["config"])
                say(f"{prog}: resuming from {path} at step {state['step']}")
        if state is None:
            cfg = validate(cfg)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        if held and not args.resume and not args.overwrite:
            # a new run would truncate metrics.jsonl and rotate its checkpoints over the old run's
            _err(prog, f"{cfg.run.out} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                       "--overwrite to start over there, or another --out")
            return 2
        trainer = Trainer(cfg, resume=state)
        if args.overwrite and held and main_rank and state is None:
            # (only now: a run that fails to start keeps the old one's checkpoints)
            remove_checkpoints(cfg.run.out)
        if trainer.dist.is_main and (state is None or cfg.run.steps > int(state["step"])):
            # the run's options, on --resume as changed there (not when there is nothing left to train)
            from .._io import atomic_write

            atomic_write(os.path.join(cfg.run.out, "config.yaml"), lambda f: f.write(to_yaml(cfg).encode()))
        summary = trainer.train()
    except ConfigError as exc:
        for line in exc.errors:
            _err(prog, f"config: {line}")
        return 2
    except (DatasetUnavailableError, CheckpointError) as exc:
        _err(prog, str(exc))
        return 2
    except ValueError as exc:  # bad arguments found while building (device, batch size > data set, ...)
        _err(prog, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 2
    except OSError as exc:  # a file that cannot be written or read: disk full, read-only, a file in the way, ...
        if exc.errno not in _WRITE_ERRNOS:
            raise
        kept = find_resume_checkpoint(cfg.run.out) if cfg is not None else None
        _err(prog, f"cannot access {exc.filename or (cfg.run.out if cfg is not None else args.out)}: "
                   f"{exc.strerror or exc}"
                   + (f"; the last good checkpoint stays: {kept}" if kept else ""))
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting up (once training, the trainer stops between steps), or a
        # second Ctrl-C while it stopped
        if trainer is None:
            _err(prog, "interrupted before training started (no step was taken)")
        else:
            kept = find_resume_checkpoint(cfg.run.out)
            _err(prog, f"interrupted at step {trainer.step}" + (f"; the last good checkpoint stays: {kept}"
                                                                  if kept else ""))
        return 130
    finally:
        if cfg is not None:
            release_run_directory(cfg.run.out)
    return {"done": 0, "interrupted": 130, "diverged": 3, "out_of_memory": 4}[summary["status"]]


SAMPLE_FILE = re.compile(r"\d{6}\.png")  # a sample folder's files: 000000.png, 000001.png, ...


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .._io import atomic_write
    from ..demo import save_grid
    from .checkpoint import CheckpointError, generate, load_generator
    from .logs import save_toy_samples

    from .._backend import BackendUnavailableError, resolve

    prog = "fastgan sample"
    if args.n < 1:
        _err(prog, f"--n must be >= 1, got {args.n}")
        return 2
    if args.nrow is not None and args.nrow < 1:
        _err(prog, f"--nrow must be >= 1, got {args.nrow}")
        return 2
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    if ext in (".png", ".npy") and os.path.isdir(out):
        _err(prog, f"--out {out} is a directory; a {ext} file was asked for (name the file, or a folder "
                   "without an extension for one PNG per sample)")
        return 2
    try:
        g = load_generator(args.checkpoint, device=args.device, ema=not args.no_ema, impl=args.impl)
        if args.impl is not None:  # said here, not from the first layer's forward
            resolve(args.impl, next(g.parameters()).device, "--impl")
    except (CheckpointError, ValueError, BackendUnavailableError) as exc:
        _err(prog, str(exc))
        return 2
    labels = None
    if args.label is not None:
        if not g.num_classes:
            _err(prog, "--label: this generator is not conditional")
            return 2
        if not 0 <= args.label < g.num_classes:
            _err(prog, f"--label must be in [0, {g.num_classes}), got {args.label}")
            return 2
        labels = torch.full((args.n,), args.label, dtype=torch.long)
    x = generate(g, args.n, seed=args.seed, labels=labels)
    if g.data_kind == "toy":
        if ext == ".png":
            from ..data import toy_mixture

            centers = None
            try:
                centers = toy_mixture(g.data_info.get("dataset")).centers
            except (ValueError, TypeError):
                pass
            save_toy_samples(x, out, None, centers, title=f"{args.n} samples, step {g.checkpoint_step}")
        else:
            if ext != ".npy":
                out += ".npy"
            atomic_write(out, lambda f: np.save(f, x.numpy()))
    elif ext == ".png":
        save_grid(x, out, nrow=args.nrow or max(1, int(round(args.n ** 0.5))))
    elif ext == ".npy":
        atomic_write(out, lambda f: np.save(f, x.numpy()))
    else:
        from torchvision.utils import save_image

        os.makedirs(out, exist_ok=True)
        for i in range(x.shape[0]):
            path = os.path.join(out, f"{i:06d}.png")
            atomic_write(path, lambda f, i=i: save_image(x[i], f, format="png", normalize=True, value_range=(-1, 1)))
        # the folder holds this set alone: earlier, larger sets' extra samples would be scored with it
        stale = [name for name in os.listdir(out) if SAMPLE_FILE.fullmatch(name) and int(name[:6]) >= args.n]
        for name in stale:
            os.remove(os.path.join(out, name))
        if stale:
            print(f"{prog}: removed {len(stale)} samples of an earlier, larger set from {out}")
    print(f"{prog}: wrote {args.n} samples to {out} (step {g.checkpoint_step}"
          f"{', EMA weights' if g.uses_ema else ''})")
    return 0


def add_command(subparsers) -> None:
    """Register ``fastgan train`` and ``fastgan sample`` on an ``argparse`` subparsers object."""
    from .._backend import IMPLS
    from ..data import DATASETS

    from .._help import plain_help

    p = subparsers.add_parser("train", help="train a GAN (DCGAN / WGAN-GP / LSGAN / hinge; images or 2D toys)",
                              description=plain_help("fastgan train: train a GAN.\n" + __doc__.split("\n", 1)[1],
                                                     stop_at="fastgan sample CHECKPOINT"),
                              epilog=TRAIN_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML configuration (nested by section or flat)")
    p.add_argument("--preset", help="named preset (--list-presets); 'none' = plain defaults")
    p.add_argument("--dataset", metavar="NAME", help=f"data set: {', '.join(DATASETS)} (default: the preset's)")
    p.add_argument("--steps", type=int, help="G steps to train to")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints/last.pt (else its .prev.pt, "
                   "else the newest step_N.pt)")
    p.add_argument("--overwrite", action="store_true", help="start a new run in a DIR that holds one (its "
                   "checkpoints are deleted); without it that is refused")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--impl", choices=IMPLS, help="backend of every fused layer (ref | triton | cuda | auto)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--root", help="data directory (Fashion-MNIST IDX files, torchvision data, image folder)")
    p.add_argument("--download", action="store_true", help="let torchvision download (internet)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="any option: section.key=value or a unique key (value parsed as YAML)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--list-options", action="store_true", help="every option with its default, doc and source")
    p.add_argument("--list-presets", action="store_true", help="the named presets")
    p.set_defaults(func=cmd_train)

    s = subparsers.add_parser("sample", help="write samples of a trained generator",
                              description="Write N samples of a `fastgan train` checkpoint's generator: toy data "
                              "-> .npy (or a .png scatter); images -> PATH.png grid, PATH.npy array in [-1, 1], "
                              "or a folder of PNGs.")
    s.add_argument("checkpoint", help="a fastgan train checkpoint file, or a run directory (its checkpoints/last.pt); "
                   "fastgan demo's checkpoints: fastgan eval scores them, its samples.png holds its grid")
    s.add_argument("--n", type=int, default=64, help="number of samples (default %(default)s)")
    s.add_argument("--out", required=True, help="output path (.npy, .png, or a folder)")
    s.add_argument("--seed", type=int, default=0, help="seed of z (default %(default)s)")
    s.add_argument("--device", default="cpu", help="default %(default)s")
    s.add_argument("--impl", choices=IMPLS, default=None, help="fused-layer backend (default auto)")
    s.add_argument("--no-ema", action="store_true", help="the raw G weights even when the run kept an EMA")
    s.add_argument("--label", type=int, help="class of every sample (conditional generators)")
    s.add_argument("--nrow", type=int, help="images per row of a PNG grid")
    s.set_defaults(func=cmd_sample)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastgan")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
