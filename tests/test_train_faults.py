"""Hardening of the trainer (issue 12): crash-safe checkpoints (real subprocesses killed with SIGKILL mid-write),
clear errors for damaged / foreign checkpoint files and unreadable data files, NaN / Inf steps that never reach
the weights, out-of-memory hints, and configuration validation (YAML, --set, the Python API)."""
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from fastgan.cli import main as cli_main
from fastgan.data import DatasetUnavailableError, DataFileError, load_dataset
from fastgan.train import ConfigError, Trainer, load_checkpoint, load_config, load_generator
from fastgan.train import trainer as trainer_mod
from fastgan.train.checkpoint import CheckpointError, load_resume_checkpoint, periodic_checkpoints, save_checkpoint
from fastgan.train.config import TrainConfig, validate
from fastgan.train.config_checks import check_against_data
from fastgan.train.faults import is_out_of_memory

from _train_settings import QUIET, TINY_TOY
from _train_settings import TINY_IMAGE as _TINY_IMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_IMAGE = _TINY_IMAGE + ["max_samples=64", "n_samples=4"]  # later settings win


def _cfg(preset, out, *sets):
    tiny = TINY_TOY if preset.startswith("toy") else TINY_IMAGE
    return load_config(preset=preset, sets=tiny + QUIET + [f"out={out}", *sets])


def _trainer(preset, out, *sets, log=lambda s: None):
    return Trainer(_cfg(preset, out, *sets), log=log)


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for key in ("FASTGAN_TEST_PAUSE_CHECKPOINT_AT_STEP", "FASTGAN_TEST_PAUSE_MARKER"):
        env.pop(key, None)
    return env


def _toy_cli(out, *sets, steps=None):
    """``fastgan train`` arguments of a quiet tiny toy run into ``out`` (None: none given), more ``--set``
    options ``sets``."""
    args = ["train", "--preset", "toy-ring8", "--no-progress", "--impl", "ref", "--threads", "1"]
    args += [] if out is None else ["--out", str(out)]
    args += [] if steps is None else ["--steps", str(steps)]
    return args + ["--set", *TINY_TOY, "sample_every=0", "plots=false", *sets]


def _flip_tensor_byte(path, tensor):
    """Flip one byte inside ``tensor``'s stored bytes in the checkpoint file (the zip stores them raw)."""
    data = bytearray(open(path, "rb").read())
    pattern = tensor.detach().cpu().contiguous().numpy().tobytes()
    at = data.find(pattern)
    assert at > 0, "tensor bytes not found in the file"
    data[at + len(pattern) // 2] ^= 0x55
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("toyrun")
    _trainer("toy-ring8", out, "steps=2").train()
    return str(out / "checkpoints" / "last.pt")


# ----------------------------------------------------------------------------
# Checkpoints: checksum, diagnosis, fallback
# ----------------------------------------------------------------------------

def test_checksum_catches_a_flipped_byte_that_torch_load_misses(tmp_path):
    path = str(tmp_path / "c.pt")
    w = torch.linspace(-3, 3, 257)
    save_checkpoint({"step": 7, "w": w, "nested": {"b": torch.ones(3, dtype=torch.bfloat16), 1: [1.5, "x"]}}, path)
    state = load_checkpoint(path)
    assert state["checksum"]["algorithm"] == "sha256-state-v1" and len(state["checksum"]["sha256"]) == 64
    assert torch.equal(state["w"], w)
    _flip_tensor_byte(path, w)
    damaged = torch.load(path, weights_only=True)  # still a plain torch file: torch itself notices nothing
    assert not torch.equal(damaged["w"], w)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert msg.startswith(f"checkpoint {path} is corrupt: its contents do not match their checksum") and "\n" not in msg


def test_checkpoints_without_a_checksum_still_load(tmp_path, toy_checkpoint):
    state = torch.load(toy_checkpoint, weights_only=True)
    del state["checksum"]  # as written before checksums existed
    old = str(tmp_path / "old.pt")
    torch.save(state, old)
    assert load_checkpoint(old)["step"] == 2
    assert load_generator(old).checkpoint_step == 2


def _foreign_files(tmp_path, toy_checkpoint):
    raw = open(toy_checkpoint, "rb").read()
    files = {
        "empty": (b"", "the file is empty (0 bytes)"),
        "truncated": (raw[:len(raw) // 2], "it is truncated"),
        "random": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "it is not a torch file"),
        "text": (b"step: 3\nloss: 0.5\n", "it is a text file (starting 'step: 3')"),
    }
    out = {}
    for name, (data, why) in files.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        out[name] = (str(p), why)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "state_dict.pt")
    out["state_dict"] = (str(tmp_path / "state_dict.pt"), "it holds 2 tensors (a model state_dict?)")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    out["tensor"] = (str(tmp_path / "tensor.pt"), "it holds a single tensor (3,)")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    out["module"] = (str(tmp_path / "module.pt"), "it holds pickled Python objects")
    torch.save({"kind": "fastgan-demo", "generator": {}}, tmp_path / "demo.pt")
    out["demo"] = (str(tmp_path / "demo.pt"), "it is a 'fastgan-demo' file")
    return out


def test_unreadable_and_foreign_files_give_one_line_naming_file_and_reason(tmp_path, toy_checkpoint):
    for name, (path, why) in _foreign_files(tmp_path, toy_checkpoint).items():
        for load in (load_checkpoint, load_generator):
            with pytest.raises(CheckpointError) as exc:
                load(path)
            msg = str(exc.value)
            assert msg.startswith(f"checkpoint {path} ") and why in msg and "\n" not in msg, (name, msg)
    with pytest.raises(CheckpointError, match="no checkpoints/last.pt under"):
        load_generator(str(tmp_path))


def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = _toy_cli(run, "checkpoint_every=1")
    assert cli_main(args + ["--steps", "2"]) == 0
    ck = run / "checkpoints"
    last = load_checkpoint(str(ck / "last.pt"))
    assert last["step"] == 2 and load_checkpoint(str(ck / "last.prev.pt"))["step"] == 1
    _flip_tensor_byte(str(ck / "last.pt"), next(iter(last["generator"].values())))
    with pytest.warns(UserWarning, match="falling back to the previous good checkpoint"):
        assert load_generator(str(run)).checkpoint_step == 1  # `fastgan sample RUN_DIR` falls back too
    assert (ck / "last.pt").exists()  # ... without moving anything
    capsys.readouterr()
    assert cli_main(args + ["--steps", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"warning: checkpoint {ck / 'last.pt'} is corrupt" in out
    assert f"falling back to the previous good checkpoint {ck / 'last.prev.pt'}" in out
    assert "resuming from" in out and "at step 1" in out
    assert (ck / "last.damaged.pt").exists()  # kept for inspection, out of the rotation
    assert load_checkpoint(str(ck / "last.pt"))["step"] == 3
    assert load_checkpoint(str(ck / "last.prev.pt"))["step"] == 2
    # killed between moving last.pt to .prev and renaming the new file into place: .prev, with a warning
    os.unlink(ck / "last.pt")
    messages = []
    assert load_resume_checkpoint(str(run), log=messages.append)[1]["step"] == 2
    assert messages == [f"fastgan: warning: checkpoint {ck / 'last.pt'} is missing (the run was stopped while "
                        f"replacing it?); falling back to the previous good checkpoint {ck / 'last.prev.pt'}"]
    (ck / "last.prev.pt").write_bytes(b"")
    path, state = load_resume_checkpoint(str(run), log=messages.append)  # then the newest periodic one
    assert path == str(ck / "step_000003.pt") and state["step"] == 3
    for _, path in periodic_checkpoints(str(ck)):
        os.unlink(path)
    with pytest.raises(CheckpointError, match="is missing .*; checkpoint .*last.prev.pt cannot be read: the file is "
                                              "empty"):
        load_resume_checkpoint(str(run))


def test_resume_falls_back_to_the_newest_periodic_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = _toy_cli(run, "checkpoint_every=2")
    assert cli_main(args + ["--steps", "5"]) == 0
    ck = run / "checkpoints"
    for name in ("last.pt", "last.prev.pt"):
        os.unlink(ck / name)
    capsys.readouterr()
    # (it started from scratch with the default preset's data, over the run's metrics)
    assert cli_main(args + ["--steps", "6", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"falling back to the previous good checkpoint {ck / 'step_000005.pt'}" in out and "at step 5" in out
    assert load_checkpoint(str(ck / "last.pt"))["step"] == 6


def test_periodic_checkpoints_are_kept_by_step_number(tmp_path):
    for step in (997_000, 998_000, 999_000, 1_000_000, 1_001_000):
        (tmp_path / f"step_{step:06d}.pt").write_bytes(b"x")
    (tmp_path / "step_notes.pt").write_bytes(b"x")  # not a periodic checkpoint
    assert [s for s, _ in periodic_checkpoints(str(tmp_path))] == [997_000, 998_000, 999_000, 1_000_000, 1_001_000]
    tr = _trainer("toy-ring8", tmp_path.parent / (tmp_path.name + "-run"), "keep_checkpoints=2")
    tr.ckpt_dir = str(tmp_path)
    tr._prune_periodic()  # as text, step_1000000.pt sorted first: the newest were deleted as they were written
    assert sorted(os.listdir(tmp_path)) == ["step_1000000.pt", "step_1001000.pt", "step_notes.pt"]


def test_a_new_run_does_not_overwrite_an_existing_one(tmp_path, capsys):
    run = tmp_path / "run"
    args = _toy_cli(run, "checkpoint_every=1", "log_every=1")
    assert cli_main(args + ["--steps", "3"]) == 0
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    metrics = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli_main(args + ["--steps", "2"]) == 2  # the same command without --resume
    err = capsys.readouterr().err
    assert f"{run} already holds a run (checkpoints/last.pt" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert (run / "metrics.jsonl").read_text() == metrics
    # --resume in a run folder whose checkpoints are all gone: refused, not a silent new run over its files
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    assert cli_main(args + ["--steps", "4", "--resume"]) == 2
    assert "holds a run (metrics.jsonl, config.yaml) but no loadable checkpoint" in capsys.readouterr().err
    # --overwrite starts over (the old run's checkpoints gone)
    (run / "checkpoints" / "step_000009.pt").write_bytes(b"old")
    assert cli_main(args + ["--steps", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.prev.pt", "last.pt", "step_000001.pt",
                                                                       "step_000002.pt"]
    assert [json.loads(line)["step"] for line in open(run / "metrics.jsonl")] == [1, 2]


# ----------------------------------------------------------------------------
# Real processes: SIGKILL in the middle of a checkpoint write; the CLI on bad files
# ----------------------------------------------------------------------------

def test_sigkill_mid_checkpoint_write_then_resume_finishes(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "paused"
    cmd = [sys.executable, "-m", "fastgan", "train", "--preset", "toy-ring8", "--out", str(run), "--steps", "6",
           "--no-progress", "--impl", "ref", "--threads", "1", "--set", *TINY_TOY, "checkpoint_every=2",
           "sample_every=0", "plots=false", "log_every=100"]
    env = _env()
    env.update(FASTGAN_TEST_PAUSE_CHECKPOINT_AT_STEP="4", FASTGAN_TEST_PAUSE_MARKER=str(marker))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=30)[0].decode()[-2000:]
        ck = run / "checkpoints"
        temps = [f for f in os.listdir(ck) if f.endswith(".tmp")]
        assert len(temps) == 1 and os.path.getsize(ck / temps[0]) > 0  # the half-written step-4 checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(str(ck / "last.pt"))["step"] == 2  # the last good checkpoint is intact
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(str(ck / temps[0]))

    resumed = subprocess.run(cmd + ["--resume"], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "at step 2" in resumed.stdout
    assert load_checkpoint(str(ck / "last.pt"))["step"] == 6
    assert not [f for f in os.listdir(ck) if f.endswith(".tmp")]  # the stale half-write was cleaned up


@pytest.mark.parametrize("kind", ["truncated", "state_dict"])
def test_fastgan_sample_on_a_bad_file_exits_2_with_one_line(kind, tmp_path, toy_checkpoint):
    path, why = _foreign_files(tmp_path, toy_checkpoint)[kind]
    proc = subprocess.run([sys.executable, "-m", "fastgan", "sample", path, "--n", "4", "--out",
                           str(tmp_path / "x.npy")], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastgan sample: error: checkpoint {path} ") and why in err[0], err
    assert not (tmp_path / "x.npy").exists()


# ----------------------------------------------------------------------------
# NaN / Inf steps
# ----------------------------------------------------------------------------

def _snapshot(tr):
    return {"G": {k: v.clone() for k, v in tr.G.state_dict().items()},
            "D": {k: v.clone() for k, v in tr.D.state_dict().items()},
            "opt_d": [v["exp_avg"].clone() for v in tr.opt_d.state.values()],
            "steps": [torch.as_tensor(v["step"]).clone() for opt in (tr.opt_d, tr.opt_g) for v in opt.state.values()]}


def _changed(a: dict, b: dict) -> list:
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("fused", ["off", "on"])  # on: the fused Adam skips the updates on the device
def test_nan_losses_never_reach_the_weights_and_stop_after_k_with_a_checkpoint(tmp_path, monkeypatch, fused):
    lines = []
    tr = _trainer("dcgan-mnist", tmp_path, "steps=20", "nonfinite_patience=3", "ema=0.5", f"fused_adam={fused}",
                  log=lines.append)
    assert bool(tr.opt_d.defaults.get("fused")) is (fused == "on")
    tr.train(stop_after=2)  # two good steps (writes last.pt at step 2)
    good = _snapshot(tr)
    ema_before = {k: v.clone() for k, v in tr.ema.model.state_dict().items()}
    monkeypatch.setattr(trainer_mod.L, "d_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    monkeypatch.setattr(trainer_mod.L, "g_loss", lambda kind, logits: logits.sum() * float("inf"))
    summary = tr.train()
    assert summary["status"] == "diverged" and summary["step"] == 5  # stopped after exactly K = 3 bad steps
    assert [e["kind"] for e in summary["events"]] == ["nonfinite"] * 3
    now = _snapshot(tr)
    assert _changed(good["G"], now["G"]) == [] and _changed(good["D"], now["D"]) == []  # weights and BN buffers
    assert all(torch.equal(a, b) for a, b in zip(good["opt_d"], now["opt_d"]))
    assert all(torch.equal(a, b) for a, b in zip(good["steps"], now["steps"]))  # Adam's step counts too
    assert _changed(ema_before, tr.ema.model.state_dict()) == []
    text = "\n".join(lines)
    assert "3 non-finite steps in a row" in text and "the state after the last finite update (step 5)" in text
    saved = load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))
    assert saved["step"] == 5 and saved["monitor"]["nonfinite_run"] == 0
    assert _changed(good["G"], saved["generator"]) == [] and _changed(good["D"], saved["discriminator"]) == []
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.prev.pt"))["step"] == 2


@pytest.mark.parametrize("fused", ["off", "on"])
def test_a_nan_batch_leaves_d_and_its_running_statistics_untouched(tmp_path, monkeypatch, fused):
    tr = _trainer("dcgan-mnist", tmp_path, "steps=3", "nonfinite_patience=5", f"fused_adam={fused}")
    tr.train_step()
    before = {k: v.clone() for k, v in tr.D.state_dict().items()}
    assert any(k.endswith("running_mean") for k in before)  # D has batch norm: the NaN would reach its buffers
    real, y = tr.stream.next()
    monkeypatch.setattr(tr.stream, "next", lambda: (torch.full_like(real, float("nan")), y))
    tr.train_step()
    assert _changed(before, tr.D.state_dict()) == []
    assert tr.monitor.nonfinite_run == 1


@pytest.mark.parametrize("preset, sets", [("dcgan-mnist", ["ema=0.5", "ema_start=2", "clip_weights=0.5"]),
                                          ("wgan-gp-mnist", ["n_critic=2", "weight_decay_d=0.01"])])
def test_updates_skipped_on_the_device_match_the_host_checked_ones(tmp_path, monkeypatch, preset, sets):
    """With a fused Adam the trainer decides on the device whether an update goes through (no host read);
    the weights, optimiser state, EMA and buffers must come out exactly as with the host-read check, over
    good steps and steps with a NaN in D's or G's loss (each kind of skip), with EMA before and after its
    start, weight clipping and AdamW."""
    from fastgan.train import optim as optim_mod

    real_d_loss, real_g_loss = trainer_mod.L.d_loss, trainer_mod.L.g_loss
    bad = {"d": {2}, "g": {3, 4}}  # trainer steps whose D / G loss is NaN

    def run(out, on_device):
        tr = _trainer(preset, out, "steps=6", "nonfinite_patience=10", "fused_adam=on", *sets)
        if not on_device:
            monkeypatch.setattr(trainer_mod, "skips_on_device", lambda opt: False)
        monkeypatch.setattr(trainer_mod.L, "d_loss", lambda *a, **k: real_d_loss(*a, **k) * (
            float("nan") if tr.step in bad["d"] else 1.0))
        monkeypatch.setattr(trainer_mod.L, "g_loss", lambda *a, **k: real_g_loss(*a, **k) * (
            float("nan") if tr.step in bad["g"] else 1.0))
        calls = []
        step = optim_mod.step_unless_nonfinite
        monkeypatch.setattr(trainer_mod, "step_unless_nonfinite", lambda opt, f: (calls.append(1), step(opt, f)))
        rows = [tr.train_step() for _ in range(6)]
        monkeypatch.undo()
        return tr, rows, len(calls)

    dev, dev_rows, dev_calls = run(tmp_path / "device", True)
    host, host_rows, host_calls = run(tmp_path / "host", False)
    assert dev_calls > 0 and host_calls == 0  # each run took the path it should
    messages = [[e["message"].split(";")[0] for e in tr.monitor.events if e["kind"] == "nonfinite"]
                for tr in (dev, host)]
    assert messages[0] == messages[1] == ["step 3: NaN/Inf in D's loss/gradient", "step 4: NaN/Inf in G's "
                                          "loss/gradient", "step 5: NaN/Inf in G's loss/gradient"]
    assert dev.monitor.nonfinite_run == host.monitor.nonfinite_run == 0  # step 6 was good again
    assert [r["loss_d"] for r in dev_rows[:2]] == [r["loss_d"] for r in host_rows[:2]]
    for name in ("G", "D"):
        a, b = getattr(dev, name).state_dict(), getattr(host, name).state_dict()
        assert _changed(a, b) == [], name
    if dev.ema is not None:
        assert _changed(dev.ema.model.state_dict(), host.ema.model.state_dict()) == []
    for opt_a, opt_b in ((dev.opt_d, host.opt_d), (dev.opt_g, host.opt_g)):
        for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa), sorted(sa)


# ----------------------------------------------------------------------------
# Out of memory
# ----------------------------------------------------------------------------

def test_out_of_memory_in_a_step_gives_a_hint_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory")) and not is_out_of_memory(ValueError("x"))
    original = trainer_mod.Trainer.train_step

    def step(self):
        if self.step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)
    args = ["train", "--preset", "toy-ring8", "--no-progress", "--impl", "ref", "--threads", "1", "--out",
            str(tmp_path), "--steps", "6", "--set", *TINY_TOY, "checkpoint_every=2", "sample_every=0", "plots=false"]
    assert cli_main(args) == 4
    out = capsys.readouterr().out
    assert "out of memory in the training step at step 3 (batch 32, amp off" in out
    assert "run.amp=bf16" in out and "--batch-size 16" in out
    assert "no checkpoint is written for it; the last good checkpoint stays" in out
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))["step"] == 2


def test_out_of_memory_between_steps_saves_the_progress(tmp_path, monkeypatch):
    lines = []
    tr = _trainer("toy-ring8", tmp_path, "steps=6", "sample_every=3", log=lines.append)

    def samples():
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(tr, "write_samples", samples)
    summary = tr.train()
    assert summary["status"] == "out_of_memory" and summary["step"] == 3
    text = "\n".join(lines)
    assert "out of memory in logging / sampling / evaluation / checkpointing at step 3" in text
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))["step"] == 3


# ----------------------------------------------------------------------------
# Data files that cannot be read
# ----------------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def test_unreadable_idx_and_csv_files_are_named(tmp_path, capsys):
    root = tmp_path / "fm"
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 255, (16, 28, 28))
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.arange(16) % 10)))
    with pytest.raises(DatasetUnavailableError, match=f"{root / 'train-images-idx3-ubyte.gz'} not found"):
        load_dataset("fashion-mnist", root=str(root))
    good = gzip.compress(_idx(images))
    bad_files = {gzip.compress(b"\x00\x00\x07\x01junk"): "is not an IDX file", good[:len(good) // 2]: "truncated or corrupt",
                 gzip.compress(_idx(images)[:-100]): "IDX payload is"}
    for i, (data, why) in enumerate(bad_files.items()):
        sub = tmp_path / f"fm{i}"
        sub.mkdir()
        (sub / "train-labels-idx1-ubyte.gz").write_bytes((root / "train-labels-idx1-ubyte.gz").read_bytes())
        (sub / "train-images-idx3-ubyte.gz").write_bytes(data)
        with pytest.raises(DataFileError) as exc:
            load_dataset("fashion-mnist", root=str(sub))
        assert str(sub / "train-images-idx3-ubyte.gz") in str(exc.value) and why in str(exc.value)
    # through the CLI: exit 2, one line naming the file
    assert cli_main(["train", "--dataset", "fashion-mnist", "--root", str(sub), "--no-progress", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(sub / "train-images-idx3-ubyte.gz") in err[0]
    # the shipped-MNIST CSV reader
    from fastgan.data.images import _read_mnist5k

    csv = tmp_path / "mnist_5k.csv.gz"
    csv.write_bytes(gzip.compress(b"0,1,2\n3,x,5\n"))
    with pytest.raises(DataFileError, match=f"cannot read {csv}"):
        _read_mnist5k(str(csv))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_in_a_folder_is_named(workers, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "data" / "cls"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    args = ["train", "--preset", "dcgan-mnist", "--dataset", "folder", "--root", str(tmp_path / "data"),
            "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress", "--impl", "ref", "--threads", "1",
            "--set", *[s for s in TINY_IMAGE if not s.startswith("max_samples")], f"workers={workers}",
            "sample_every=0", "plots=false"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fastgan train: error: dataset 'folder': cannot read ") and \
        str(folder / "broken.png") in err[0], err
    # the same single-class folder cannot feed a conditional GAN
    with pytest.raises(ConfigError, match="model.conditional: 'acgan' needs labelled data with >= 2 classes"):
        _trainer("dcgan-mnist", tmp_path / "run2", "dataset=folder", f"root={tmp_path / 'data'}", "max_samples=null",
                 "conditional=acgan")


# ----------------------------------------------------------------------------
# Configuration validation
# ----------------------------------------------------------------------------

REJECTED = [
    # (preset, --set values, the one line expected)
    ("dcgan-mnist", ["lr_dd=1e-4"], "unknown option 'lr_dd' (did you mean 'lr_d'"),
    ("dcgan-mnist", ["run.ema=0.9"], "unknown option 'run.ema': 'ema' is in section 'tricks' (did you mean "
                                     "'tricks.ema'?)"),
    ("dcgan-mnist", ["steps=ten"], "run.steps: expected an integer, got 'ten'"),
    ("dcgan-mnist", ["lr_g=.inf"], "optim.lr_g: must be a finite number, got inf"),
    ("dcgan-mnist", ["scale_inputs=maybe"], "data.scale_inputs: expected true or false, got 'maybe'"),
    ("dcgan-mnist", ["loss=wasserstein", "penalty=wgan-gp"], "model.d_norm: batch norm mixes samples"),
    ("dcgan-mnist", ["n_critic=0"], "optim.n_critic: must be >= 1, got 0"),
    ("dcgan-mnist", ["pack=3"], "tricks.pack: run.batch_size 8 must be a multiple of the pack size 3"),
    ("dcgan-mnist", ["conditional=embedding", "pack=2"], "packing mixes the labels of a pack"),
    ("dcgan-mnist", ["d_norm=vbn", "vbn_reference_size=3", "pack=2"],
     "tricks.vbn_reference_size: D's virtual batch norm needs a reference batch of >= 2 packs"),
    ("dcgan-mnist", ["d_norm=vbn", "vbn_reference_size=128"],
     "tricks.vbn_reference_size: 128 is larger than the data set (data.max_samples = 64)"),
    ("dcgan-mnist", ["loss=wasserstein"], "'wasserstein' needs a Lipschitz constraint on D"),
    ("dcgan-mnist", ["penalty_weight=5"], "loss.penalty_weight: set loss.penalty too"),
    ("dcgan-mnist", ["loss=hinge", "label_smoothing=0.1"], "label tricks need a loss with targets"),
    ("dcgan-mnist", ["max_samples=4"], "run.batch_size: 8 is larger than the data set (data.max_samples = 4)"),
    ("dcgan-mnist", ["dataset=cifar10"], "data.root: data set 'cifar10' is read from a directory"),
    ("dcgan-mnist", ["channels=3"], "data.channels: applies to an image folder"),
    ("dcgan-mnist", ["replay_size=64", "replay_ratio=0"], "tricks.replay_ratio: 0 replays nothing"),
    ("dcgan-mnist", ["swap_prob=0.5", "swap_every=500", "steps=100"], "swapping would never happen"),
    ("dcgan-mnist", ["eval_every=3", "log_every=2"], "run.eval_every: evaluations run at log points"),
    ("toy-ring8", ["upsample=pixelshuffle"], "model.upsample: 'pixelshuffle' applies to the DCGAN generator"),
    ("toy-ring8", ["g_norm=vbn", "vbn_reference_size=1"], "tricks.vbn_reference_size: must be >= 2, got 1"),
    ("toy-ring8", ["arch=dcgan"], "model.arch: 'dcgan' needs an image data set"),
    ("dcgan-mnist", ["penalty=r1", "d_norm=layer", "clip_weights=0.01"], "weight clipping and a gradient penalty"),
    ("dcgan-mnist", ["minibatch=stddev", "stddev_group=3"], "must be a multiple of the group size 3"),
    ("dcgan-mnist", ["best_metric=eval_classifier_score"], "needs periodic evaluation (set run.eval_every)"),
    ("dcgan-mnist", ["label_smoothing=0.1", "random_labels=true"], "both set targets; turn one off"),
    ("dcgan-mnist", ["feature_matching_only=true"], "needs loss.feature_matching > 0"),
    ("dcgan-mnist", ["image_size=48"], "DCGAN needs a power of two"),
    ("toy-ring8", ["g_norm=vbn", "compile_g=true"], "run.compile_g: not with model.g_norm='vbn'"),
    ("dcgan-mnist", ["random_labels=true", "real_label_range=[0.7, 1.2]"],
     "tricks.real_label_range: binary cross-entropy ('nonsaturating') needs targets in [0, 1]"),
    ("toy-ring8", ["conditional=embedding", "penalty=wgan-gp", "replay_size=64"],
     "tricks.replay_size: replayed fakes keep their own classes"),
    ("toy-ring8", ["d_norm=vbn", "minibatch=stddev", "vbn_reference_size=6"],
     "tricks.vbn_reference_size: D's reference batch (6) goes through the minibatch stddev layer"),
    ("dcgan-mnist", ["momentum_d=0.9"], "optim.momentum_d: has no effect without optim.optimizer_d=sgd"),
    ("dcgan-mnist", ["optimizer_g=sgd", "optimizer_d=sgd", "beta1=0.0"], "optim.beta1: has no effect without"),
    ("dcgan-mnist", ["ema_start=100"], "tricks.ema_start: has no effect without tricks.ema"),
    ("dcgan-mnist", ["instance_noise_decay=100"], "tricks.instance_noise_decay: has no effect without"),
    ("dcgan-mnist", ["fake_label_range=[0.0, 0.2]"], "tricks.fake_label_range: has no effect without"),
    ("dcgan-mnist", ["swap_every=10"], "tricks.swap_every: has no effect without tricks.swap_prob"),
    ("toy-ring8", ["slerp_grid=true"], "tricks.slerp_grid: has no effect without image data"),
    ("dcgan-mnist", ["aux_weight=0.5"], "loss.aux_weight: has no effect without model.conditional=acgan"),
    ("dcgan-mnist", ["minibatch=stddev", "minibatch_kernels=16"], "model.minibatch_kernels: has no effect"),
    ("dcgan-mnist", ["stddev_group=2"], "model.stddev_group: has no effect without model.minibatch=stddev"),
    ("dcgan-mnist", ["penalty=r1", "d_norm=layer", "penalty_weight=0"], "loss.penalty_weight: 0 turns penalty"),
]


@pytest.mark.parametrize("preset,sets,line", REJECTED, ids=[" ".join(s) for _, s, _ in REJECTED])
def test_config_rejections_one_line_each(preset, sets, line):
    tiny = TINY_TOY if preset.startswith("toy") else TINY_IMAGE
    with pytest.raises(ConfigError) as exc:
        load_config(preset=preset, sets=tiny + sets)
    assert len(exc.value.errors) == 1 and line in exc.value.errors[0], exc.value.errors
    assert "\n" not in exc.value.errors[0]


@pytest.mark.parametrize("preset,sets", [
    ("dcgan-mnist", ["loss=lsgan", "random_labels=true", "real_label_range=[0.7, 1.2]"]),  # squared error: fine
    ("dcgan-mnist", ["optimizer_d=sgd", "momentum_d=0.9"]),
    ("dcgan-mnist", ["ema=0.9", "ema_start=100"]),
    ("dcgan-mnist", ["instance_noise=0.1", "instance_noise_decay=100"]),
    ("toy-ring8", ["conditional=embedding", "penalty=r1", "replay_size=64"]),
    ("toy-ring8", ["d_norm=vbn", "minibatch=stddev", "vbn_reference_size=8"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_config_companions_accepted(preset, sets):
    tiny = TINY_TOY if preset.startswith("toy") else TINY_IMAGE
    load_config(preset=preset, sets=tiny + sets)


def test_config_rejections_from_yaml_cli_and_python(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"preset": "dcgan-mnist", "tricks": {"emma": 0.9}, "run": {"batch_size": "big"}}))
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    text = "\n".join(exc.value.errors)
    assert f"{path}: unknown option 'tricks.emma' (did you mean 'tricks.ema'" in text
    assert f"{path}: run.batch_size: expected an integer, got 'big'" in text
    path.write_text("preset: dcgan-mnist\ntricks: 5\n")
    with pytest.raises(ConfigError, match="section 'tricks' must be a mapping of options, got 5"):
        load_config(str(path))
    path.write_text("preset: toy-ring8\nloss: {loss: wasserstein}\n")  # nested section, impossible combination
    assert cli_main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastgan train: error: config: loss.loss: 'wasserstein' needs a Lipschitz constraint on D: "
                   "loss.penalty (wgan-gp / wgan-lp), loss.clip_weights or model.spectral_norm; without one the "
                   "critic diverges"]
    # the Python API: values set directly are type-checked too, before anything is built
    cfg = TrainConfig()
    cfg.run.steps, cfg.optim.lr_d, cfg.tricks.real_label_range = "10", float("nan"), [0.7, "high"]
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert sorted(exc.value.errors) == sorted([
        "run.steps: expected an integer, got '10' (str)", "optim.lr_d: must be a finite number, got nan",
        "tricks.real_label_range: expected a list of finite numbers, got [0.7, 'high']"])
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match="expected a fastgan.train.TrainConfig, got dict"):
        Trainer({"steps": 10})
    cfg = TrainConfig()
    cfg.loss.loss, cfg.loss.penalty, cfg.model.d_norm = "wasserstein", "wgan-gp", "batch"
    with pytest.raises(ConfigError, match="batch norm mixes samples"):
        validate(cfg)
    assert check_against_data(load_config(sets=["conditional=acgan"]), type("D", (), {"num_classes": 10})()) == []


def test_fastgan_eval_verifies_the_checksum_too(tmp_path, toy_checkpoint):
    import shutil

    from fastgan import eval as fg_eval

    path = str(tmp_path / "c.pt")
    shutil.copyfile(toy_checkpoint, path)
    assert fg_eval.load_checkpoint(path)["step"] == 2
    state = load_checkpoint(path)
    _flip_tensor_byte(path, next(iter(state["discriminator"].values())))
    with pytest.raises(fg_eval.CheckpointError, match=f"checkpoint {path} is corrupt: its contents do not match"):
        fg_eval.load_checkpoint(path)


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    args = _toy_cli(None, "checkpoint_every=1", steps=2)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert cli_main(args + ["--out", str(blocker)]) == 2  # --out names a file
    err = capsys.readouterr().err
    assert err.startswith(f"fastgan train: error: cannot access {blocker}") and "Traceback" not in err

    # a full disk while torch.save writes the second checkpoint: torch reports it as a RuntimeError
    from fastgan import _io

    real_replace, calls = os.replace, []

    def full_disk(src, dst):
        calls.append(dst)
        if len(calls) > 2:
            try:
                raise OSError(errno.ENOSPC, "No space left on device", src)
            except OSError as exc:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from exc
        return real_replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", full_disk)
    assert cli_main(args + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "the last good checkpoint stays" in err and "Traceback" not in err
    monkeypatch.setattr(_io.os, "replace", real_replace)
    assert load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.pt"))["step"] >= 1


@pytest.mark.skipif(sys.platform == "win32", reason="the run-directory lock uses fcntl (none on Windows)")
def test_two_runs_on_one_directory_are_refused(tmp_path, capsys):
    # both used to crash (each deleting the other's temporary checkpoint file) and leave last.pt missing
    run = tmp_path / "run"
    code = ("import fcntl, os, sys, time; os.makedirs(sys.argv[1], exist_ok=True); "
            "f = open(os.path.join(sys.argv[1], '.fastgan.lock'), 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('locked', flush=True); "
            "time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        args = _toy_cli(run, steps=1)
        assert cli_main(args) == 2
        assert f"{run} is in use by another fastgan train (pid {other.pid})" in capsys.readouterr().err
        assert not (run / "checkpoints").exists()
    finally:
        other.kill()
        other.wait()
    assert cli_main(args) == 0  # the lock went with its process
    assert cli_main(args + ["--resume", "--steps", "2"]) == 0  # and a run's own lock with the run


def test_a_resume_with_nothing_to_train_rewrites_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    args = _toy_cli(run, "checkpoint_every=1")
    assert cli_main(args + ["--steps", "2"]) == 0
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    capsys.readouterr()
    assert cli_main(args + ["--steps", "2", "--resume"]) == 0
    assert "already at step 2: nothing to train" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before  # .prev kept its step 1


def test_overwrite_keeps_the_old_checkpoints_when_the_new_run_cannot_start(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = _toy_cli(run, "checkpoint_every=1")
    assert cli_main(args + ["--steps", "2"]) == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    # a new run that fails while the trainer is built (its data, its device, memory, ...)
    def fails(self, *args, **kwargs):
        raise ValueError("run.device: no such device")

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", fails)
    assert cli_main(args + ["--steps", "2", "--overwrite"]) == 2
    assert "no such device" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # (they were deleted first)


def test_resume_with_the_run_s_own_config_file(tmp_path, capsys):
    # config.yaml as an earlier version wrote it: every option, the former default real_label_range included
    run = tmp_path / "run"
    args = _toy_cli(run, "checkpoint_every=0")
    assert cli_main(args + ["--steps", "2"]) == 0
    written = yaml.safe_load((run / "config.yaml").read_text())
    written["tricks"]["real_label_range"] = [0.7, 1.2]
    (run / "config.yaml").write_text(yaml.safe_dump(written))
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(str(path))
    state["config"]["tricks"]["real_label_range"] = [0.7, 1.2]
    save_checkpoint(state, str(path))
    capsys.readouterr()
    assert cli_main(["train", "--config", str(run / "config.yaml"), "--resume", "--steps", "3"]) == 0, \
        capsys.readouterr().err
    assert load_checkpoint(str(path))["step"] == 3
    # and a new run from that file: the former default is no option "without effect"
    assert cli_main(["train", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "new"), "--steps",
                     "1"]) == 0
    # nothing left to train: config.yaml stays as it was
    before = (run / "config.yaml").read_bytes()
    assert cli_main(args + ["--steps", "2", "--resume"]) == 0
    assert (run / "config.yaml").read_bytes() == before


def test_api_resume_checks_options_changed_on_resume(tmp_path):
    # the Python API does not lock options: a value changed on resume is checked as a new run's
    tr = _trainer("toy-ring8", tmp_path, "steps=1")
    tr.train()
    state = load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))
    cfg = _cfg("toy-ring8", tmp_path, "steps=2")
    cfg.tricks.random_labels, cfg.tricks.real_label_range = True, [0.7, 1.2]
    with pytest.raises(ConfigError, match="binary cross-entropy"):
        Trainer(cfg, resume=state, log=lambda s: None)


def test_replay_with_acgan_and_a_gradient_penalty_is_allowed(tmp_path):
    # AC-GAN's adversarial output does not read the labels: no class pairing to break
    tr = _trainer("toy-ring8", tmp_path, "steps=1", "conditional=acgan", "penalty=wgan-gp", "loss=wasserstein",
                  "d_norm=none", "replay_size=64")
    stats = tr.d_step(keep_fake=False)
    assert not torch.equal(stats["_y_fake"], stats["_y_real"])  # fresh labels for the fakes, as before


def test_a_file_system_without_locks_still_trains(tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    args = _toy_cli(tmp_path / "run", steps=1)
    assert cli_main(args) == 0
    assert "cannot be locked (No locks available)" in capsys.readouterr().err
