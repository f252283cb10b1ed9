"""The trainer end to end (CPU, tiny models, a few steps): presets, tricks inside training, exact resume,
checkpoints, the failure watch, the CLI (`fastgan train` / `fastgan sample`) and its errors."""
import os
import signal
import subprocess
import sys
import time

import json

import numpy as np
import pytest
import torch

from fastgan.cli import main as cli_main
from fastgan.train import (PRESETS, ConfigError, Trainer, generate, load_checkpoint, load_config, load_generator)
from fastgan.train import trainer as trainer_mod
from fastgan.train.checkpoint import CheckpointError, save_checkpoint

from _host_reads import HostReads
from _train_settings import QUIET, TINY_IMAGE, TINY_TOY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(preset, out, *sets, toy=None):
    toy = PRESETS[preset]["data"]["dataset"] in ("ring8", "grid25") if toy is None else toy
    return load_config(preset=preset, sets=(TINY_TOY if toy else TINY_IMAGE) + QUIET + [f"out={out}", *sets])


def _trainer(preset, out, *sets, resume=None):
    return Trainer(_cfg(preset, out, *sets), resume=resume, log=lambda s: None)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


# ----------------------------------------------------------------------------
# Presets and outputs
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_a_few_steps(preset, tmp_path):
    if PRESETS[preset]["data"]["dataset"] == "fashion-mnist":
        from fastgan.data import FASHION_MNIST_ROOT

        if not os.path.isfile(os.path.join(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz")):
            pytest.skip("Fashion-MNIST IDX files not installed")
    steps = 1 if PRESETS[preset].get("optim", {}).get("n_critic", 1) > 1 else 2
    plots = preset in ("toy-ring8", "dcgan-mnist")  # matplotlib is slow here: draw for two presets only
    tr = _trainer(preset, tmp_path, f"steps={steps}", "checkpoint_every=1", f"plots={plots}")
    summary = tr.train()
    assert summary["status"] == "done" and summary["step"] == steps
    assert os.path.isfile(tmp_path / "checkpoints" / "last.pt")
    assert os.path.isfile(tmp_path / "checkpoints" / f"step_{steps:06d}.pt")
    assert os.path.isfile(tmp_path / "samples" / f"step_{steps:06d}.png") == (plots or not tr.toy)
    assert os.path.isfile(tmp_path / "losses.png") == plots
    rows = [line for line in open(tmp_path / "metrics.jsonl")]
    assert len(rows) == steps
    if tr.toy:
        pts = np.load(tmp_path / "samples" / f"step_{steps:06d}.npy")
        assert pts.shape == (4 * 16, 2) and np.isfinite(pts).all()


def test_image_run_writes_sample_grid_of_the_fixed_z(tmp_path):
    tr = _trainer("dcgan-mnist", tmp_path, "steps=2", "sample_every=1", "slerp_grid=true")
    tr.train()
    names = sorted(os.listdir(tmp_path / "samples"))
    assert names == ["slerp_000001.png", "slerp_000002.png", "step_000001.png", "step_000002.png"]
    # the grid is made from the same z every time
    assert torch.equal(tr.fixed_z, _trainer("dcgan-mnist", tmp_path / "b", "steps=2").fixed_z)


def test_impl_switches_every_fused_layer(tmp_path):
    tr = _trainer("ganhacks-mnist", tmp_path, "steps=1", "impl=ref")
    impls = {m.impl for net in (tr.G, tr.D) for m in net.modules()
             if type(m).__module__.startswith("fastgan.nn") and hasattr(m, "impl")}
    assert impls == {"ref"}


def test_plain_and_triton_fused_smoke(tmp_path):
    """fused=False builds plain PyTorch layers; impl=triton runs the fused kernels (interpreter on CPU)."""
    tr = _trainer("toy-ring8", tmp_path / "plain", "steps=1", "fused=false", "g_norm=batch")
    assert not any(type(m).__module__.startswith("fastgan.nn") for m in tr.G.modules())
    assert tr.train()["status"] == "done"
    from fastgan import _backend

    if not (torch.cuda.is_available() or _backend.interpreter_usable()):
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed")
    tr = _trainer("toy-ring8", tmp_path / "triton", "steps=1", "impl=triton", "hidden=8", "batch_size=16")
    assert {m.impl for m in tr.G.modules() if hasattr(m, "impl")} == {"triton"}
    summary = tr.train()
    assert summary["status"] == "done" and np.isfinite(summary["final"]["loss_g"])


# ----------------------------------------------------------------------------
# Exact resume
# ----------------------------------------------------------------------------

TOY_TRICKS = ["replay_size=64", "swap_prob=0.5", "swap_every=2", "historical_averaging=0.01", "ema=0.9",
              "label_flip=0.1", "random_labels=true", "instance_noise=0.1", "minibatch=discrimination",
              "g_norm=vbn", "d_norm=vbn", "vbn_reference_size=16", "conditional=acgan", "n_critic=2",
              "feature_matching=0.5"]
IMAGE_TRICKS = ["conditional=embedding", "replay_size=16", "ema=0.9", "instance_noise=0.2", "label_smoothing=0.1",
                "minibatch=stddev", "d_norm=instance", "downsample=avgpool", "sample_every=2"]


@pytest.mark.parametrize("preset,tricks,steps", [("toy-ring8", TOY_TRICKS, 8), ("dcgan-mnist", IMAGE_TRICKS, 4),
                                                 ("wgan-gp-mnist", ["pack=2", "spectral_norm=true"], 2)],
                         ids=["toy-many-tricks", "image-tricks", "wgan-gp-pack"])
def test_resume_is_bit_identical(preset, tricks, steps, tmp_path):
    straight = _trainer(preset, tmp_path / "a", f"steps={steps}", *tricks)
    straight.train()
    first = _trainer(preset, tmp_path / "b", f"steps={steps}", *tricks)
    first.train(stop_after=steps // 2)
    state = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert state["step"] == steps // 2
    second = _trainer(preset, tmp_path / "b", f"steps={steps}", *tricks, resume=state)
    second.train()
    assert second.step == straight.step == steps
    assert _same_weights(straight.G, second.G) == []
    assert _same_weights(straight.D, second.D) == []
    if straight.ema is not None:
        assert _same_weights(straight.ema.model, second.ema.model) == []
    for a, b in zip(straight.opt_d.state.values(), second.opt_d.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_between_log_points_logs_the_same_averages(tmp_path, monkeypatch):
    # the statistics of the steps since the last metrics row were lost on stopping (SIGTERM, Ctrl-C): the first
    # row after a resume averaged fewer steps than the uninterrupted run's
    sets = ("steps=10", "log_every=5")
    straight = _trainer("toy-ring8", tmp_path / "a", *sets)
    straight.train()
    first = _trainer("toy-ring8", tmp_path / "b", *sets)
    _sigterm_after_step(first, monkeypatch, 7)
    assert first.train()["status"] == "interrupted"
    state = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert len(state["log_acc"]["loss_d"]) == 2  # steps 6 and 7
    _trainer("toy-ring8", tmp_path / "b", *sets, resume=state).train()

    def rows(run):
        return {r["step"]: r for r in map(json.loads, open(tmp_path / run / "metrics.jsonl"))}

    a, b = rows("a"), rows("b")
    assert sorted(a) == sorted(b) == [5, 10]
    for key in ("loss_d", "loss_g"):
        assert a[10][key] == b[10][key], key


def test_cli_resume_continues_exactly(tmp_path, capsys):
    base = ["train", "--preset", "toy-ring8", "--no-progress", "--impl", "ref", "--threads", "1",
            "--set", *TINY_TOY, "log_every=2", "checkpoint_every=0", "sample_every=0"]
    assert cli_main(base + ["--out", str(tmp_path / "a"), "--steps", "6"]) == 0
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--steps", "3"]) == 0
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--steps", "6", "--resume"]) == 0
    a = load_checkpoint(str(tmp_path / "a" / "checkpoints" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert b["step"] == 6
    for part in ("generator", "discriminator"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps == sorted(steps) and steps[-1] == 6
    # model options cannot change under --resume
    capsys.readouterr()
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--steps", "8", "--resume", "--set", "hidden=32"]) == 2
    err = capsys.readouterr().err
    assert "model.hidden cannot change when resuming" in err and "Traceback" not in err


def test_cli_resume_accepts_the_command_line_that_started_the_run(tmp_path, capsys):
    # values spelled as YAML reads them: 1e-4 is a string to YAML, 0 an int for a float option
    spelled = ["lr_g=1e-4", "label_smoothing=0", "beta1=.5"]
    base = ["train", "--preset", "toy-ring8", "--no-progress", "--impl", "ref", "--threads", "1", "--out",
            str(tmp_path), "--set", *TINY_TOY, *spelled, "log_every=2", "checkpoint_every=0", "sample_every=0"]
    assert cli_main(base + ["--steps", "2"]) == 0
    assert cli_main(base + ["--steps", "4", "--resume"]) == 0
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))["step"] == 4
    capsys.readouterr()
    assert cli_main(base + ["--steps", "6", "--resume", "--set", "lr_g=2e-4"]) == 2  # a changed value still is not
    err = capsys.readouterr().err
    assert "optim.lr_g cannot change when resuming" in err and "Traceback" not in err


@pytest.mark.parametrize("penalty", ["r1", "r2", "wgan-gp", "dragan"])
def test_a_conditional_penalty_conditions_on_the_penalised_samples_classes(penalty, tmp_path, monkeypatch):
    import fastgan.penalties as penalties

    seen = {}
    penalize = penalties.gradient_penalty

    def spy(critic, real, fake=None, kind="wgan-gp", weight=None, **kwargs):
        seen["labels"], seen["kind"] = kwargs.get("labels"), kind
        return penalize(critic, real, fake, kind, weight, **kwargs)

    monkeypatch.setattr(penalties, "gradient_penalty", spy)
    tr = _trainer("toy-ring8", tmp_path, "steps=1", "conditional=embedding", f"penalty={penalty}", "batch_size=16")
    stats = tr.d_step(keep_fake=False)
    assert seen["kind"] == penalty
    y_real, y_fake = stats["_y_real"], stats["_y_fake"]
    assert y_real.unique().numel() > 1
    # R2 penalises D at the fakes: their own classes; R1 / DRAGAN at (perturbed) reals: the reals' classes
    want = y_fake if penalty == "r2" else y_real
    assert torch.equal(seen["labels"], want)
    if penalty == "wgan-gp":  # interpolates of pairs: each fake made with its real partner's class
        assert torch.equal(y_fake, y_real)
    else:
        assert not torch.equal(y_fake, y_real)  # fresh labels for the fakes


@pytest.mark.parametrize("sets", [["conditional=embedding"], ["conditional=acgan"], ["num_generators=2"]],
                         ids=["projection", "acgan", "mgan"])
def test_spectral_norm_reaches_the_discriminators_heads(sets, tmp_path):
    # "every discriminator weight": with SN as WGAN's only Lipschitz bound, an unnormalised projection
    # embedding left the critic's class term unbounded
    tr = _trainer("toy-ring8", tmp_path, "steps=1", "spectral_norm=true", "loss=wasserstein", "d_norm=none",
                  "batch_size=16", *sets)
    heads = [h for h in (tr.D.projection, tr.D.classifier, tr.D.generator_classifier) if h is not None]
    assert heads
    for head in heads:
        sigma = torch.linalg.matrix_norm(head.weight.detach(), ord=2)
        assert hasattr(head, "parametrizations")
        assert sigma < 1.05, f"{type(head).__name__} weight has spectral norm {sigma:.3f}"
    tr.train()
    path = tr.save()  # the checkpoint's spec rebuilds the same (normalised) heads
    state = load_checkpoint(path)
    rebuilt = Trainer(_cfg("toy-ring8", tmp_path / "r", "steps=2", "spectral_norm=true", "loss=wasserstein",
                           "d_norm=none", "batch_size=16", *sets), resume=state, log=lambda s: None)
    assert _same_weights(rebuilt.D, tr.D) == []


def test_a_checkpoint_from_before_spectral_norm_heads_resumes(tmp_path, monkeypatch):
    # written when D's heads were not normalised (its spec without spectral_norm_heads): resumed as it trained
    sets = ("spectral_norm=true", "loss=wasserstein", "d_norm=none", "batch_size=16", "conditional=embedding")
    real_specs = trainer_mod.model_specs

    def old_specs(cfg, data_info):
        spec = real_specs(cfg, data_info)
        spec["discriminator"].pop("spectral_norm_heads", None)
        return spec

    monkeypatch.setattr(trainer_mod, "model_specs", old_specs)
    old = _trainer("toy-ring8", tmp_path, "steps=1", *sets)
    old.train()
    assert not hasattr(old.D.projection, "parametrizations")
    monkeypatch.setattr(trainer_mod, "model_specs", real_specs)
    state = load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))
    resumed = _trainer("toy-ring8", tmp_path, "steps=2", *sets, resume=state)
    assert _same_weights(resumed.D, old.D) == [] and not hasattr(resumed.D.projection, "parametrizations")
    resumed.train()
    assert resumed.step == 2


def test_replay_is_refused_with_a_conditional_interpolating_penalty():
    # replayed fakes keep their own classes: an interpolate between two classes has no one label
    with pytest.raises(ConfigError, match="tricks.replay_size"):
        _cfg("toy-ring8", "/tmp/unused", "conditional=embedding", "penalty=wgan-gp", "replay_size=64")
    _cfg("toy-ring8", "/tmp/unused", "conditional=embedding", "penalty=r1", "replay_size=64")


@pytest.mark.parametrize("legacy", [False, True], ids=["saved-horizon", "checkpoint-without-horizon"])
def test_resume_with_more_steps_keeps_the_instance_noise_horizon(legacy, tmp_path):
    # instance_noise_decay=0 decays over "the whole run": the run's length when it started, so extending it
    # with --resume --steps must not raise the noise again (it rose from ~0 back to half its start)
    first = _trainer("toy-ring8", tmp_path, "steps=4", "instance_noise=0.5", "batch_size=16")
    first.train()
    assert [first.noise_std(s) for s in range(4)] == [0.5, 0.375, 0.25, 0.125]
    state = load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))
    assert state["tricks"]["noise_decay_steps"] == 4
    if legacy:  # a checkpoint written before the horizon was saved: its configuration's run length
        del state["tricks"]["noise_decay_steps"]
    resumed = _trainer("toy-ring8", tmp_path, "steps=8", "instance_noise=0.5", "batch_size=16", resume=state)
    assert [resumed.noise_std(s) for s in range(4, 8)] == [0.0] * 4
    resumed.train()
    assert resumed.state_dict()["tricks"]["noise_decay_steps"] == 4
    explicit = _trainer("toy-ring8", tmp_path / "x", "steps=4", "instance_noise=0.5", "instance_noise_decay=8")
    assert explicit.noise_std(4) == 0.25


# ----------------------------------------------------------------------------
# Tricks inside the training step
# ----------------------------------------------------------------------------

def test_n_critic_counts_d_steps(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=2", "n_critic=3")
    tr.train()
    d_state = next(iter(tr.opt_d.state.values()))
    g_state = next(iter(tr.opt_g.state.values()))
    assert int(d_state["step"]) == 6 and int(g_state["step"]) == 2
    assert tr.stream.index == 6 * 32  # six real batches drawn


def test_separate_or_mixed_real_fake_batches(tmp_path, monkeypatch):
    sizes = {}
    for separate in (True, False):
        tr = _trainer("toy-ring8", tmp_path / str(separate), "steps=1", f"separate_batches={separate}")
        calls = []
        original = tr.D.forward_all
        monkeypatch.setattr(tr.D, "forward_all", lambda x, y=None: calls.append(x.shape[0]) or original(x, y))
        tr.train_step()
        sizes[separate] = calls
    # separate: real and fake in one D pass whose batch norms take per-half statistics (this D has none;
    # fastgan.nn.separate_batches), else two; mixed: one pass, one batch's statistics
    assert sizes[True] == [64, 32]
    assert sizes[False] == [64, 32]


@pytest.mark.parametrize("preset,sets", [("dcgan-mnist", ["conditional=acgan"]), ("ganhacks-mnist", [])])
def test_separate_batches_in_one_pass_train_like_two_passes(tmp_path, monkeypatch, preset, sets):
    """tricks.separate_batches as one D pass (D's batch norms with per-half statistics) trains as the two
    passes do: the same weights, running statistics and batch counts after two steps."""
    states = []
    for one_pass in (True, False):
        tr = _trainer(preset, tmp_path / str(one_pass), "steps=2", "separate_batches=true", "batch_size=8",
                      "impl=ref", "seed=3", *sets)
        if preset == "dcgan-mnist":
            assert tr.d_one_pass  # (its D: fastgan batch-norm layers only)
        tr.d_one_pass = one_pass and tr.d_one_pass
        calls = []
        original = tr.D.forward_all
        monkeypatch.setattr(tr.D, "forward_all", lambda x, y=None: calls.append(x.shape[0]) or original(x, y))
        tr.train()
        states.append((tr.G.state_dict(), tr.D.state_dict(), calls))
    (g1, d1, calls1), (g2, d2, calls2) = states
    if preset == "dcgan-mnist":
        assert calls1[:2] == [16, 8] and calls2[:3] == [8, 8, 8]  # D step, G step
    for one, two in ((g1, g2), (d1, d2)):
        for key in one:
            if one[key].dtype.is_floating_point:
                torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5, msg=key)
            else:
                assert torch.equal(one[key], two[key]), key


def test_separate_batches_fall_back_to_two_passes_where_one_would_mix(tmp_path):
    tr = _trainer("dcgan-mnist", tmp_path, "steps=1", "separate_batches=true", "minibatch=stddev")
    assert not tr.d_one_pass


def test_smoothed_and_flipped_labels_reach_the_loss(tmp_path, monkeypatch):
    seen = []
    original = trainer_mod.L.d_loss

    def spy(kind, r, f, t_real=None, t_fake=None):
        seen.append((t_real, t_fake))
        return original(kind, r, f, t_real, t_fake)

    monkeypatch.setattr(trainer_mod.L, "d_loss", spy)
    _trainer("toy-ring8", tmp_path / "a", "steps=1", "label_smoothing=0.2").train_step()
    t_real, t_fake = seen[-1]
    assert torch.all(t_real == 0.8) and torch.all(t_fake == 0.0)
    _trainer("toy-ring8", tmp_path / "b", "steps=1", "random_labels=true", "batch_size=256").train_step()
    t_real, t_fake = seen[-1]
    assert t_real.min() >= 0.7 and t_real.max() <= 1.2 and t_fake.min() >= 0 and t_fake.max() <= 0.3
    _trainer("toy-ring8", tmp_path / "c", "steps=1", "label_flip=0.5", "batch_size=256").train_step()
    t_real, _ = seen[-1]
    assert 0.3 < (t_real == 0).float().mean().item() < 0.7


def test_replay_buffer_feeds_old_fakes_to_d(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=3", "replay_size=64", "replay_ratio=0.25")
    tr.train_step()
    assert len(tr.replay) == 32
    tr.train_step()
    assert len(tr.replay) == 64
    buffered = tr.replay.data.clone()
    tr.d_step(keep_fake=False)  # now 8 of the 32 fakes D sees come from the buffer
    seen = tr._last_fake
    from_buffer = torch.cdist(seen, buffered).min(1).values == 0
    assert from_buffer[:8].all() and not from_buffer[8:].any()


def test_instance_noise_schedule_in_training(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=6", "instance_noise=0.4", "instance_noise_decay=4")
    summary = tr.train()
    rows = [__import__("json").loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [round(r["noise_std"], 6) for r in rows] == [0.4, 0.3, 0.2, 0.1, 0.0, 0.0]
    assert summary["status"] == "done"
    whole_run = _trainer("toy-ring8", tmp_path / "b", "steps=10", "instance_noise=0.5")
    assert whole_run.noise_std(5) == pytest.approx(0.25)  # decay 0: over the whole run


def test_feature_matching_replaces_the_g_loss(tmp_path):
    tr = _trainer("dcgan-mnist", tmp_path, "steps=1", "feature_matching=1.0", "feature_matching_only=true")
    stats = tr.train_step()
    assert "loss_g_adv" not in stats and stats["loss_g"] == pytest.approx(stats["feature_matching"])


def test_historical_averaging_and_weight_clipping(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=2", "historical_averaging=0.1", "loss=wasserstein",
                  "clip_weights=0.01", "optimizer_d=sgd", "lr_d=0.05")
    tr.train()
    assert tr.hist_d.count == 2 and tr.hist_g.count == 2
    assert all(p.abs().max() <= 0.01 for p in tr.D.parameters())


def test_optimizers_ttur_and_sgd(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=1", "optimizer_d=sgd", "momentum_d=0.9", "lr_d=4e-4", "lr_g=1e-4")
    assert isinstance(tr.opt_d, torch.optim.SGD) and tr.opt_d.param_groups[0]["lr"] == 4e-4
    assert tr.opt_d.param_groups[0]["momentum"] == 0.9
    assert isinstance(tr.opt_g, torch.optim.Adam) and tr.opt_g.param_groups[0]["lr"] == 1e-4
    assert tr.opt_g.param_groups[0]["betas"] == (0.5, 0.999)


def test_gradient_penalty_lazy_every_other_step(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=2", "loss=wasserstein", "penalty=wgan-gp", "penalty_every=2",
                  "d_norm=layer")
    stats = [tr.d_step(keep_fake=False) for _ in range(4)]
    assert ["penalty" in s for s in stats] == [True, False, True, False]
    assert all(s["penalty"].item() >= 0 for s in stats if "penalty" in s)


def test_swapping_in_old_snapshots(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=3", "swap_prob=1.0", "swap_every=1", "swap_pool=2")
    first = tr.train_step()
    assert first["swap_g"] == 0 and first["swap_d"] == 0  # nothing kept yet
    second = tr.train_step()
    assert second["swap_g"] == 1 and second["swap_d"] == 1
    assert tr.g_pool.steps == [1, 2] and tr.d_pool.steps == [1, 2]


def test_vbn_reference_batch_fixed_and_passed_each_step(tmp_path):
    from fastgan.nn import VirtualBatchNorm1d

    tr = _trainer("toy-ring8", tmp_path, "steps=2", "g_norm=vbn", "d_norm=vbn", "vbn_reference_size=8")
    ref_real = tr.vbn_real.clone()
    g_layer = next(m for m in tr.G.modules() if isinstance(m, VirtualBatchNorm1d))
    d_layer = next(m for m in tr.D.modules() if isinstance(m, VirtualBatchNorm1d))
    seen_g, seen_d = [], []
    for _ in range(2):
        tr.train_step()
        seen_g.append(g_layer.reference[0])
        seen_d.append(d_layer.reference[0])
        assert g_layer.reference[2] == 8 and d_layer.reference[2] == 8
    assert seen_g[0] is not seen_g[1] and seen_d[0] is not seen_d[1]  # a reference pass every step
    assert torch.equal(tr.vbn_real, ref_real)
    assert torch.equal(tr.vbn_real, tr.stream.fixed_batch(8, tr.cfg.run.seed + 3)[0])


@pytest.mark.parametrize("conditional", ["acgan", "embedding"])
def test_conditional_gans(conditional, tmp_path):
    tr = _trainer("dcgan-mnist", tmp_path, "steps=2", f"conditional={conditional}")
    stats = tr.train_step()
    assert tr.G.num_classes == 10
    if conditional == "acgan":
        assert tr.D.classifier is not None and "aux_d" in stats and "aux_g" in stats
    else:
        assert tr.D.projection is not None and tr.D.projection.weight.grad is not None
    tr.train()
    g = load_generator(str(tmp_path / "checkpoints" / "last.pt"))
    x = generate(g, 5, seed=0, labels=torch.full((5,), 3))
    assert x.shape == (5, 1, 16, 16)


def test_pacgan_discriminator_sees_packs(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "steps=1", "pack=4")
    assert tr.D.base.in_features == 8
    calls = []
    original = tr.D.forward_all
    tr.D.forward_all = lambda x, y=None: calls.append(tuple(x.shape)) or original(x, y)
    tr.train_step()
    assert calls[0] == (16, 8)  # 8 real and 8 fake packs of 4 samples x 2 features, one D pass


# ----------------------------------------------------------------------------
# Failure watch in training
# ----------------------------------------------------------------------------

def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    sets = ["steps=2", "nonfinite_patience=2"]
    tr = _trainer("toy-ring8", tmp_path, *sets)
    tr.train()
    good = load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))
    before = {k: v.clone() for k, v in tr.G.named_parameters()}
    monkeypatch.setattr(trainer_mod.L, "g_loss", lambda kind, logits: logits.sum() * float("nan"))
    tr2 = _trainer("toy-ring8", tmp_path, "steps=10", "nonfinite_patience=2", resume=good)
    summary = tr2.train()
    assert summary["status"] == "diverged" and summary["step"] == 4
    assert [e["kind"] for e in summary["events"]] == ["nonfinite", "nonfinite"]
    assert all(torch.equal(before[k], v) for k, v in tr2.G.named_parameters())  # updates were skipped
    kept = load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))  # the last good weights, saved on stopping
    assert kept["step"] == 4 and all(torch.equal(before[k], kept["generator"][k]) for k in before)
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.prev.pt"))["step"] == 2
    events = open(tmp_path / "events.jsonl").read()
    assert "NaN/Inf in G's loss/gradient" in events


def test_monitor_reports_d_winning_during_training(tmp_path, capsys):
    tr = Trainer(_cfg("toy-ring8", tmp_path, "steps=3", "d_loss_floor=100", "d_loss_patience=2"), log=print)
    summary = tr.train()
    assert [e["kind"] for e in summary["events"]] == ["d_loss_zero"]
    assert "[fastgan monitor]" in capsys.readouterr().out


def _interrupt_inside_step(tr, monkeypatch, at_step, times=1):
    """Send Ctrl-C (SIGINT) ``times`` times from inside D's update of step ``at_step``: after D's optimiser
    step, before G's -- the middle of a step."""
    step_d = tr.opt_d.step

    def step(*args, **kwargs):
        out = step_d(*args, **kwargs)
        if tr.step == at_step - 1:
            for i in range(times):
                if i:
                    time.sleep(1.1)  # (a second Ctrl-C within a second of the first is the same keypress's copy)
                os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(tr.opt_d, "step", step)


def test_ctrl_c_mid_step_stops_after_the_step_and_resumes_exactly(tmp_path, monkeypatch):
    # a KeyboardInterrupt mid-step used to be saved as step N with D updated once more, G's batch-norm stats and
    # the data stream advanced: the resumed run differed from the uninterrupted one in every tensor
    straight = _trainer("toy-ring8", tmp_path / "a", "steps=6")
    straight.train()
    tr = _trainer("toy-ring8", tmp_path / "b", "steps=6")
    _interrupt_inside_step(tr, monkeypatch, at_step=3)
    summary = tr.train()
    assert summary["status"] == "interrupted" and summary["step"] == 3  # the step in progress finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    state = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert state["step"] == 3
    resumed = _trainer("toy-ring8", tmp_path / "b", "steps=6", resume=state)
    resumed.train()
    assert _same_weights(straight.G, resumed.G) == [] and _same_weights(straight.D, resumed.D) == []
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_second_ctrl_c_stops_at_once_without_saving_the_half_step(tmp_path, monkeypatch):
    tr = _trainer("toy-ring8", tmp_path, "steps=6", "checkpoint_every=1")
    _interrupt_inside_step(tr, monkeypatch, at_step=3, times=2)
    summary = tr.train()
    assert summary["status"] == "interrupted"
    kept = load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))
    assert kept["step"] == 2  # the last whole step's checkpoint, not the half step labelled 2
    two_steps = _trainer("toy-ring8", tmp_path / "two", "steps=2")
    two_steps.train()
    for part, model in (("generator", two_steps.G), ("discriminator", two_steps.D)):
        assert all(torch.equal(v, kept[part][k]) for k, v in model.state_dict().items()), part


def test_train_after_an_interrupted_train_continues(tmp_path, monkeypatch):
    tr = _trainer("toy-ring8", tmp_path, "steps=5")
    _interrupt_inside_step(tr, monkeypatch, at_step=2)
    assert tr.train()["status"] == "interrupted" and tr.step == 2
    summary = tr.train()  # (the stop request was kept: it returned at once, "interrupted" again)
    assert summary["status"] == "done" and tr.step == 5


def test_an_ignored_sigint_stays_ignored(tmp_path, monkeypatch):
    # a background job of a script starts with SIGINT ignored: the run must not start reacting to it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        tr = _trainer("toy-ring8", tmp_path, "steps=4")
        _interrupt_inside_step(tr, monkeypatch, at_step=2)
        assert tr.train()["status"] == "done" and tr.step == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigterm_after_step(tr, monkeypatch, at_step):
    """SIGTERM to this process once ``tr`` has finished step ``at_step``."""
    original = tr.train_step

    def step():
        out = original()
        if tr.step == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(tr, "train_step", step)


def test_sigterm_saves_and_stops(tmp_path, monkeypatch):
    tr = _trainer("toy-ring8", tmp_path, "steps=50")
    _sigterm_after_step(tr, monkeypatch, 3)
    summary = tr.train()
    assert summary["status"] == "interrupted" and summary["step"] == 3
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is not None


# ----------------------------------------------------------------------------
# Checkpoints, load_generator, fastgan sample
# ----------------------------------------------------------------------------

def test_checkpoint_writes_are_atomic_and_keep_the_previous(tmp_path, monkeypatch):
    path = str(tmp_path / "ck" / "last.pt")
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    save_checkpoint({"step": 2, "w": torch.ones(3)}, path)
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(str(tmp_path / "ck" / "last.prev.pt"))["step"] == 1

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint({"step": 3}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2
    assert sorted(os.listdir(tmp_path / "ck")) == ["last.prev.pt", "last.pt"]  # no temp file left


def test_corrupt_or_foreign_checkpoints_give_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(str(bad))
    torch.save({"kind": "fastgan-demo"}, tmp_path / "demo.pt")
    with pytest.raises(CheckpointError, match="not a fastgan training checkpoint"):
        load_checkpoint(str(tmp_path / "demo.pt"))
    assert cli_main(["sample", str(bad), "--n", "4", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastgan sample: error: checkpoint") and "Traceback" not in err[0]
    # a corrupt last.pt: --resume falls back to the previous good one
    run = tmp_path / "run"
    args = ["train", "--preset", "toy-ring8", "--out", str(run), "--no-progress", "--impl", "ref",
            "--set", *TINY_TOY, "checkpoint_every=1", "sample_every=0"]
    assert cli_main(args + ["--steps", "2"]) == 0
    (run / "checkpoints" / "last.pt").write_bytes(b"\x00" * 10)
    assert cli_main(args + ["--steps", "3", "--resume"]) == 0
    assert load_checkpoint(str(run / "checkpoints" / "last.pt"))["step"] == 3


def test_sample_cli_and_load_generator(tmp_path, capsys):
    toy = tmp_path / "toy"
    _trainer("toy-ring8", toy, "steps=2", "ema=0.5").train()
    ck = str(toy / "checkpoints" / "last.pt")
    g = load_generator(ck)
    state = load_checkpoint(ck)
    assert not g.training and g.data_kind == "toy" and g.checkpoint_step == 2
    assert all(torch.equal(g.state_dict()[k], state["ema"][k]) for k in state["ema"])  # EMA weights by default
    assert cli_main(["sample", ck, "--n", "10", "--out", str(tmp_path / "pts.npy")]) == 0
    assert np.load(tmp_path / "pts.npy").shape == (10, 2)
    assert cli_main(["sample", str(toy), "--n", "10", "--out", str(tmp_path / "pts.png")]) == 0  # a scatter
    assert os.path.getsize(tmp_path / "pts.png") > 0

    img = tmp_path / "img"
    _trainer("dcgan-mnist", img, "steps=1").train()
    ck = str(img / "checkpoints" / "last.pt")
    g = load_generator(ck)
    x = generate(g, 6, seed=1)
    assert x.shape == (6, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, generate(g, 6, seed=1))
    assert cli_main(["sample", ck, "--n", "6", "--out", str(tmp_path / "grid.png")]) == 0
    assert cli_main(["sample", ck, "--n", "6", "--out", str(tmp_path / "imgs.npy")]) == 0
    arr = np.load(tmp_path / "imgs.npy")
    assert arr.shape == (6, 1, 16, 16)
    assert cli_main(["sample", ck, "--n", "3", "--out", str(tmp_path / "folder")]) == 0
    assert sorted(os.listdir(tmp_path / "folder")) == ["000000.png", "000001.png", "000002.png"]
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    assert cli_main(["sample", ck, "--n", "2", "--out", str(tmp_path / "folder")]) == 0
    # the folder holds this set alone (an earlier, larger set's third sample removed), and the user's file
    assert sorted(os.listdir(tmp_path / "folder")) == ["000000.png", "000001.png", "notes.txt"]
    assert (tmp_path / "folder" / "notes.txt").read_text() == "mine"


def test_sample_cli_bad_arguments_are_one_line(tmp_path, capsys):
    toy = tmp_path / "toy"
    _trainer("toy-ring8", toy, "steps=1").train()
    (tmp_path / "taken.png").mkdir()
    cases = [(["--nrow", "-2"], "--nrow must be >= 1"),
             (["--out", str(tmp_path / "taken.png")], "is a directory"),
             (["--impl", "cuda"], "impl='cuda' is unavailable"),  # (CPU tensors here)
             (["--device", "cuda:99"], "--device='cuda:99'"),
             (["--device", "nonsense"], "is not a device")]
    for extra, message in cases:
        capsys.readouterr()
        args = ["sample", str(toy), "--n", "4", "--out", str(tmp_path / "x.png"), *extra]
        assert cli_main(args) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def test_train_cli_refuses_a_backend_that_is_not_live_on_its_device(tmp_path, capsys):
    args = ["train", "--preset", "toy-ring8", "--no-progress", "--device", "cpu", "--impl", "cuda",
            "--out", str(tmp_path), "--steps", "1", "--set", *TINY_TOY]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "model.impl: impl='cuda' is unavailable" in err and "Traceback" not in err


def test_unscaled_inputs_still_sample_in_minus_one_one(tmp_path):
    tr = _trainer("dcgan-mnist", tmp_path, "steps=1", "scale_inputs=false")
    real, _ = tr.stream.next()
    assert tr._prepare_real(real).min() >= 0  # [0, 1] data for a (tanh + 1) / 2 generator
    tr.train()
    g = load_generator(str(tmp_path))
    assert g.output == "unit"
    x = generate(g, 4, seed=0)
    assert x.min() >= -1 and x.max() <= 1


# ----------------------------------------------------------------------------
# Command-line errors
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--set", "lr_dd=1"], "unknown option 'lr_dd' (did you mean 'lr_d'"),
    (["--set", "dataset=imagenet"], "data.dataset: 'imagenet' is not one of"),
    (["--set", "loss=hinge", "label_smoothing=0.1"], "label tricks need a loss with targets"),
    (["--preset", "wgan-gp-mnist", "--set", "d_norm=batch"], "batch norm mixes samples"),
    (["--set", "cudnn_benchmark=on", "deterministic=true"], "run.cudnn_benchmark: 'on' picks convolution"),
    (["--preset", "dcgan-mnsit"], "unknown preset 'dcgan-mnsit' (did you mean 'dcgan-mnist'"),
    (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml not found"),
])
def test_bad_configs_exit_2_with_one_line(args, message, capsys):
    assert cli_main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in err), err
    assert all(line.startswith("fastgan train: error: ") for line in err)


def test_python_m_fastgan_train_bad_config_has_no_traceback():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "fastgan", "train", "--set", "loss=kl", "pack=3"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "config: model.loss" not in proc.stderr and "loss.loss: 'kl' is not one of" in proc.stderr
    assert "tricks.pack: run.batch_size 64 must be a multiple of the pack size 3" in proc.stderr


def test_unknown_dataset_flag_is_refused(capsys):
    assert cli_main(["train", "--dataset", "imagenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.dataset: 'imagenet' is not one of 'mnist5k'" in err[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_through_the_dataloader_resumes_exactly(workers, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        os.makedirs(tmp_path / "data" / cls)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    sets = ["steps=6", "dataset=folder", f"root={tmp_path / 'data'}", f"workers={workers}", "channels=3",
            "conditional=acgan"]
    straight = _trainer("dcgan-mnist", tmp_path / "a", *sets)
    assert straight.data_info["channels"] == 3 and straight.num_classes == 2
    straight.train()
    first = _trainer("dcgan-mnist", tmp_path / "b", *sets)
    first.train(stop_after=4)  # crosses an epoch boundary (24 images, batches of 8)
    second = _trainer("dcgan-mnist", tmp_path / "b", *sets,
                      resume=load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt")))
    second.train()
    assert _same_weights(straight.G, second.G) == [] and _same_weights(straight.D, second.D) == []


def test_print_config_and_list_options(capsys):
    assert cli_main(["train", "--preset", "wgan-gp-mnist", "--print-config", "--set", "ema=0.99"]) == 0
    out = capsys.readouterr().out
    assert "penalty: wgan-gp" in out and "ema: 0.99" in out and "n_critic: 5" in out
    assert cli_main(["train", "--list-options"]) == 0
    out = capsys.readouterr().out
    assert "*tricks.label_smoothing" in out and "Salimans et al. 2016" in out


# ----------------------------------------------------------------------------
# Mixed precision, optional extras
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_and_resumes(amp, tmp_path):
    sets = ["steps=4", f"amp={amp}", "loss=wasserstein", "penalty=wgan-gp", "d_norm=layer", "separate_batches=true"]
    straight = _trainer("dcgan-mnist", tmp_path / "a", *sets)
    summary = straight.train()
    assert summary["status"] == "done" and np.isfinite(summary["final"]["loss_d"])
    assert all(torch.isfinite(p).all() for p in straight.G.parameters())
    first = _trainer("dcgan-mnist", tmp_path / "b", *sets)
    first.train(stop_after=2)
    state = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert (state["scalers"]["d"] is not None) == (amp == "fp16")
    second = _trainer("dcgan-mnist", tmp_path / "b", *sets, resume=state)
    second.train()
    assert _same_weights(straight.G, second.G) == [] and _same_weights(straight.D, second.D) == []


def test_optional_extras_degrade_gracefully(tmp_path, capsys):
    tr = Trainer(_cfg("toy-ring8", tmp_path, "steps=2", "eval_every=1", "eval_samples=200", "tensorboard=true"),
                 log=print)
    summary = tr.train()
    out = capsys.readouterr().out
    assert summary["status"] == "done"
    try:
        import fastgan.metrics  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    if "periodic evaluation is off" not in out:  # fastgan.metrics present: the toy metrics were logged
        assert "eval_modes_covered" in summary["final"]


def test_best_checkpoint_follows_the_chosen_metric(tmp_path):
    """run.best_metric keeps checkpoints/best.pt at the best periodic evaluation so far."""
    pytest.importorskip("fastgan.metrics")
    tr = _trainer("toy-ring8", tmp_path, "steps=4", "log_every=1", "eval_every=1", "eval_samples=200",
                  "best_metric=eval_modes_covered")
    tr.train()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    values = [r["eval_modes_covered"] for r in rows if "eval_modes_covered" in r]
    assert len(values) == 4
    best = load_checkpoint(str(tmp_path / "checkpoints" / "best.pt"))
    assert best["best_value"] == tr.best_value == max(values)  # "modes_covered" improves upwards
    assert best["step"] == 1 + values.index(max(values))  # the first step that reached the best value
    # Downwards for KL-like names: a lower value replaces the best, a higher one does not.
    tr.cfg.run.best_metric, tr.best_value = "eval_reverse_kl", 0.5
    tr._keep_best({"eval_reverse_kl": 0.7})
    assert tr.best_value == 0.5
    tr._keep_best({"eval_reverse_kl": 0.2})
    assert tr.best_value == 0.2
    with pytest.raises(ConfigError, match="needs periodic evaluation"):
        load_config(sets=["best_metric=eval_fid"])


def test_cudnn_autotuner_follows_the_run_setting(tmp_path, monkeypatch):
    """auto: on for CUDA unless deterministic, torch's setting left alone elsewhere; on / off: as told."""
    from types import SimpleNamespace

    from fastgan.train.trainer import cudnn_benchmark

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    run = lambda mode, det=False: SimpleNamespace(cudnn_benchmark=mode, deterministic=det)  # noqa: E731
    assert cudnn_benchmark(run("auto"), cuda) is True
    assert cudnn_benchmark(run("auto", det=True), cuda) is False
    assert cudnn_benchmark(run("auto"), cpu) is None
    assert cudnn_benchmark(run("on"), cpu) is True and cudnn_benchmark(run("off"), cuda) is False
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    _trainer("toy-ring8", tmp_path / "a", "steps=1")
    assert torch.backends.cudnn.benchmark is False  # auto on CPU: untouched
    _trainer("toy-ring8", tmp_path / "b", "steps=1", "cudnn_benchmark=on")
    assert torch.backends.cudnn.benchmark is True



def test_a_step_reads_the_gpu_once_per_update_and_once_for_its_statistics(tmp_path):
    """Each host read of a GPU value waits for everything queued before it, so the training step keeps
    them few: one finiteness check per optimiser update (loss and gradient norm together) and one
    transfer of the step's statistics (``tolist``, which does not dispatch and so is not counted here),
    not an ``.item()`` per statistic.  Counted on CPU: the same Python runs on a GPU."""
    from fastgan.train.trainer import read_stats

    tr = _trainer("dcgan-mnist", tmp_path, "steps=2")
    # Adam's CPU step reads its step counters (on a GPU the trainer's fused Adam reads nothing): not counted
    reads = HostReads().ignore(tr.opt_d, tr.opt_g)
    tr.train_step()  # warm-up: optimiser state, the buffer guard's copies
    with reads:
        stats = tr.train_step()
    assert reads.count == 2, reads.seen  # the D update and the G update
    assert all(isinstance(stats[k], float) for k in ("loss_d", "loss_g", "grad_d", "grad_g", "d_acc", "d_real"))
    assert 0.0 <= stats["d_acc"] <= 1.0
    mixed = read_stats({"a": torch.tensor(1.5), "b": torch.tensor(2, dtype=torch.int64), "c": "x", "d": 0.25})
    assert mixed == {"a": 1.5, "b": 2, "c": "x", "d": 0.25} and isinstance(mixed["b"], int)


@pytest.mark.parametrize("preset, sets", [("dcgan-mnist", ["ema=0.9"]), ("wgan-gp-mnist", ["n_critic=3"])])
def test_with_a_fused_adam_a_step_reads_the_gpu_only_for_its_statistics(tmp_path, preset, sets):
    """With ``optim.fused_adam`` (auto: on for CUDA) a non-finite update is skipped by the optimiser on the
    device, so no update reads a value back: a step, n_critic D updates included, waits for the GPU once,
    in the one transfer of its statistics (``tolist``, not counted here), where its finiteness is read."""
    tr = _trainer(preset, tmp_path, "steps=2", "fused_adam=on", *sets)
    tr.train_step()  # warm-up: optimiser state, the buffer guard's copies
    with HostReads() as reads:
        stats = tr.train_step()
    assert reads.count == 0, reads.seen
    assert all(isinstance(stats[k], float) for k in ("loss_d", "loss_g", "grad_d", "grad_g"))
    assert tr.monitor.nonfinite_run == 0


def test_in_memory_batches_copy_no_indices_to_the_device_per_step():
    """An in-memory data set's batches are indexed on the training device with the epoch's permutation,
    copied there once an epoch: a per-batch host-to-device copy of the indices would make the host wait
    for the GPU every step.  Checked on the meta device, where the copies dispatch as on a GPU (the
    batches themselves: the bit-exact resume tests)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastgan.data import ImageTensorDataset
    from fastgan.train.data import DataStream

    class Copies(TorchDispatchMode):
        """Counts copies between devices (not the dtype conversions on the device)."""
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._schema.name.split("::")[-1]
            src, dst = (args[0].device, kwargs.get("device")) if name == "_to_copy" else (
                (args[1].device, args[0].device) if name == "copy_" else (None, None))
            if dst is not None and torch.device(dst) != src:
                Copies.count += 1
            return func(*args, **kwargs)

    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    stream = DataStream(ImageTensorDataset(images, torch.arange(40) % 10, [str(i) for i in range(10)]), 8, 3,
                        torch.device("meta"))
    stream.next()  # the epoch's permutation goes to the device here
    with Copies():
        for _ in range(4):
            x, y = stream.next()
    assert Copies.count == 0 and x.device.type == "meta" and x.shape == (8, 1, 4, 4) and y.shape == (8,)
    with Copies():
        stream.next()  # a new epoch: its permutation is copied, once
    assert Copies.count == 1 and (stream.epoch, stream.index) == (1, 8)


@pytest.mark.parametrize("separate", [False, True])
def test_minibatch_layer_on_a_mixed_batch_is_noted(separate, tmp_path):
    lines = []
    tr = Trainer(_cfg("toy-ring8", tmp_path, "steps=1", "minibatch=stddev", f"separate_batches={str(separate).lower()}",
                      "batch_size=16"), log=lines.append)
    tr.train()
    noted = [line for line in lines if "sees one mixed real + fake batch" in line]
    assert len(noted) == (0 if separate else 1) and ("tricks.separate_batches=true" in noted[0] if noted else True)


@pytest.mark.parametrize("tricks", [{"real_label_range": [0.7, 1.2]},  # the former default
                                    {"random_labels": True, "real_label_range": [0.7, 1.2]}],
                         ids=["former-default", "bce-targets-above-1"])
def test_checkpoints_from_before_the_new_run_checks_still_resume(tricks, tmp_path, capsys):
    # options a new run refuses (no effect; BCE targets above 1) are locked in a checkpoint: it resumes as it trained
    base = ["train", "--preset", "toy-ring8", "--no-progress", "--impl", "ref", "--threads", "1", "--out",
            str(tmp_path), "--set", *TINY_TOY, "log_every=1", "checkpoint_every=0", "sample_every=0"]
    assert cli_main(base + ["--steps", "1"]) == 0
    path = str(tmp_path / "checkpoints" / "last.pt")
    state = load_checkpoint(path)
    state["config"]["tricks"].update(tricks)
    save_checkpoint(state, path)
    capsys.readouterr()
    assert cli_main(base + ["--steps", "2", "--resume"]) == 0, capsys.readouterr().err
    assert load_checkpoint(path)["step"] == 2
    sets = [f"{k}={v}".replace("True", "true") for k, v in tricks.items()]
    # a new run: BCE targets above 1 refused; the former default alone is no "option without effect" (an older
    # config.yaml holds it without the user having set it)
    expected = 0 if "random_labels" not in tricks else 2
    assert cli_main(base + ["--steps", "1", "--out", str(tmp_path / "new"), "--set", *sets]) == expected


def test_resume_reads_the_config_file_and_preset_given_with_it(tmp_path, capsys):
    # --config / --preset with --resume were silently ignored: a run option changed there (steps) did nothing and a
    # locked one (model width) was not refused -- the README's `--config my.yaml --resume` form
    import yaml

    run = tmp_path / "run"
    cfg = {"preset": "toy-ring8", "run": {"steps": 2, "out": str(run), "log_every": 1, "checkpoint_every": 0,
                                          "sample_every": 0, "progress": False, "threads": 1},
           "model": {"impl": "ref"}}
    for item in TINY_TOY:
        key, value = item.split("=", 1)
        cfg.setdefault("flat", {})[key] = yaml.safe_load(value)
    flat = cfg.pop("flat")
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump({**cfg, **{k: v for k, v in flat.items()}}))
    assert cli_main(["train", "--config", str(path)]) == 0
    edited = yaml.safe_load(path.read_text())
    edited["run"]["steps"] = 4  # a run option: may change
    path.write_text(yaml.safe_dump(edited))
    assert cli_main(["train", "--config", str(path), "--resume"]) == 0
    assert load_checkpoint(str(run / "checkpoints" / "last.pt"))["step"] == 4
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["steps"] == 4  # the run's file follows
    edited["run"]["steps"], edited["hidden"] = 6, 48  # a model option: locked
    path.write_text(yaml.safe_dump(edited))
    capsys.readouterr()
    assert cli_main(["train", "--config", str(path), "--resume"]) == 2
    assert "model.hidden cannot change when resuming" in capsys.readouterr().err
    assert cli_main(["train", "--preset", "toy-grid25", "--out", str(run), "--resume", "--steps", "6"]) == 2
    assert "the preset cannot change when resuming" in capsys.readouterr().err  # another preset: another run
