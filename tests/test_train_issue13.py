"""Issue 13 trainer options: ResNet / attention models in training, the mode-seeking and pixel losses, weight decay
per network, D pre-training, loss balancing, and the mode-collapse monitor."""
import math

import pytest
import torch

from fastgan.models import ResNetDiscriminator, ResNetGenerator, SelfAttention2d
from fastgan.train import ConfigError, Trainer, generate, load_config, load_generator
from fastgan.train.collapse import ClassHistogramProbe, class_histogram_stats
from fastgan.train.config import MonitorConfig
from fastgan.train.monitor import FailureMonitor
from fastgan.train.optim import build_optimizer, skips_on_device, step_unless_nonfinite
from fastgan.train.schedules import StepSchedule
from fastgan.train.tricks.diversity import mode_seeking_loss, mode_seeking_ratio, split_pairs
from fastgan.train.tricks.pixel import pixel_loss, pixel_weight

from _train_settings import QUIET, TINY_IMAGE, TINY_TOY


def _trainer(preset, out, *sets, cls=Trainer):
    toy = preset.startswith("toy")
    cfg = load_config(preset=preset, sets=(TINY_TOY if toy else TINY_IMAGE) + QUIET + [f"out={out}", *sets])
    return cls(cfg, log=lambda s: None)


def _snapshot(model):
    """The weights (not the buffers: G's batch-norm running statistics follow its forward passes)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _changed(model, before):
    return [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]


# ----------------------------------------------------------------------------
# Architectures through the trainer
# ----------------------------------------------------------------------------

def test_resnet_attention_preset_builds_the_sagan_models(tmp_path):
    tr = _trainer("sagan-resnet-mnist", tmp_path, "attention_res=8", "steps=1")
    assert isinstance(tr.G.base, ResNetGenerator) and isinstance(tr.D.base, ResNetDiscriminator)
    assert sum(isinstance(m, SelfAttention2d) for m in list(tr.G.modules()) + list(tr.D.modules())) == 2
    sn = [name for name, _ in tr.G.named_parameters() if "parametrizations" in name]
    assert sn, "model.g_spectral_norm: G's weights are spectrally normalised"
    stats = tr.train_step()
    assert math.isfinite(stats["loss_d"]) and math.isfinite(stats["loss_g"])
    gammas = [tr.G.base.attention.gamma.item(), tr.D.base.attention.gamma.item()]
    assert all(g != 0 for g in gammas)  # the attention blocks learn from step 1
    path = tr.save()  # a checkpoint rebuilds the same G (spectral norm, attention) for `fastgan sample`
    g = load_generator(path, impl="ref")
    assert isinstance(g.base, ResNetGenerator) and g.base.attention.gamma.item() == gammas[0]
    assert generate(g, 3, seed=0).shape == (3, 1, 16, 16)


def test_penalty_trains_through_resnet_attention_critic(tmp_path):
    tr = _trainer("wgan-gp-mnist", tmp_path, "arch=resnet", "attention_res=8", "n_critic=1", "steps=2")
    att = tr.D.base.attention
    before = att.query.weight.detach().clone()
    stats = tr.train_step()
    assert stats["penalty"] > 0 and math.isfinite(stats["penalty"])
    # gamma = 0 at first: only gamma learns in step 1, then the attention's own weights
    assert att.gamma.item() != 0 and torch.equal(att.query.weight, before)
    tr.train_step()
    assert not torch.equal(att.query.weight, before)


def test_dcgan_init_is_the_default_and_an_option(tmp_path):
    def conv_std(tr):
        w = torch.cat([m.weight.flatten() for m in tr.G.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
        return w.std().item()

    assert load_config(preset="none").model.init == "dcgan"
    assert abs(conv_std(_trainer("dcgan-mnist", tmp_path / "a", "ngf=16", "nz=32")) - 0.02) < 2e-3
    assert abs(conv_std(_trainer("dcgan-mnist", tmp_path / "b", "ngf=16", "nz=32", "init=default")) - 0.02) > 5e-3


def test_g_dropout_option_reaches_the_generator_and_resumes(tmp_path):
    tr = _trainer("dcgan-mnist", tmp_path, "g_dropout=0.5", "steps=1")
    drops = [m for m in tr.G.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.5 for m in drops)
    assert tr.spec["generator"]["dropout"] == 0.5
    from fastgan.train.models import build_generator

    rebuilt = build_generator(tr.spec["generator"])
    rebuilt.load_state_dict(tr.G.state_dict())  # a checkpoint's G rebuilds with its dropout
    assert sum(isinstance(m, torch.nn.Dropout) for m in rebuilt.modules()) == len(drops)


@pytest.mark.parametrize("preset", ["dcgan-mnist", "sagan-resnet-mnist"])
def test_g_dropout_sampling_keeps_samples_noisy_in_eval_mode(preset, tmp_path):
    """ganhacks #17: with g_dropout_sampling the same z gives different samples in eval mode; without, the same."""
    from fastgan.models import SamplingDropout
    from fastgan.train.models import build_generator

    for on in (False, True):
        tr = _trainer(preset, tmp_path / str(on), "g_dropout=0.5", f"g_dropout_sampling={str(on).lower()}")
        g = tr.G.eval()
        assert any(isinstance(m, SamplingDropout) for m in g.modules()) == on
        z = torch.randn(4, g.nz)
        with torch.no_grad():
            assert torch.equal(g(z), g(z)) != on
        rebuilt = build_generator(tr.spec["generator"]).eval()  # the checkpoint's G keeps the choice
        rebuilt.load_state_dict(g.state_dict())
        assert any(isinstance(m, SamplingDropout) for m in rebuilt.modules()) == on


@pytest.mark.parametrize("sets,message", [
    (["g_dropout_sampling=true"], "set model.g_dropout > 0 too"),
    (["attention_res=16"], "self-attention blocks are in the ResNet models"),
    (["arch=resnet", "attention_res=32"], "not a feature-map side"),
    (["arch=resnet", "upsample=pixelshuffle"], "pixelshuffle is for dcgan"),
    (["pixel_loss=l1", "pixel_weight=0"], "pixel_weight > 0"),
    (["class_histogram=true", "dataset=digits8x8"], "no classifier"),
])
def test_issue13_config_errors(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset="dcgan-mnist", sets=sets)


def test_resnet_needs_images():
    with pytest.raises(ConfigError, match="needs an image data set"):
        load_config(preset="toy-ring8", sets=["arch=resnet"])


# ----------------------------------------------------------------------------
# Mode-seeking loss
# ----------------------------------------------------------------------------

def test_mode_seeking_value_on_a_constructed_case():
    fake1 = torch.zeros(4, 1, 3, 3)
    fake2 = torch.full((4, 1, 3, 3), 0.5)  # |image difference| = 0.5 everywhere
    z1 = torch.zeros(4, 6)
    z2 = torch.full((4, 6), -2.0)           # |latent difference| = 2
    assert mode_seeking_ratio(fake1, fake2, z1, z2).item() == pytest.approx(0.25)
    loss, ratio = mode_seeking_loss(fake1.requires_grad_(), fake2, z1, z2)
    assert loss.item() == pytest.approx(1 / (0.25 + 1e-5)) and ratio.item() == pytest.approx(0.25)
    loss.backward()
    assert (fake1.grad > 0).all()  # moving fake1 towards fake2 would raise the loss: G pushes them apart
    f1, f2, a, b = split_pairs(torch.arange(5.0)[:, None], torch.arange(5.0)[:, None])
    assert f1.flatten().tolist() == [0, 1] and f2.flatten().tolist() == [2, 3]
    with pytest.raises(ValueError, match="one shape"):
        mode_seeking_ratio(fake1, fake2[:2], z1, z2)


@pytest.mark.parametrize("preset", ["toy-ring8", "cgan-mnist"])
def test_mode_seeking_term_enters_g_loss(preset, tmp_path, monkeypatch):
    import fastgan.train.g_extras as gx

    seen = []
    original = gx.mode_seeking_loss
    monkeypatch.setattr(gx, "mode_seeking_loss", lambda *a: seen.append(a) or original(*a))
    tr = _trainer(preset, tmp_path, "mode_seeking=2.0", "steps=1")
    stats = tr.train_step()
    f1, f2, z1, z2 = seen[0]
    assert f1.shape == f2.shape and f1.shape[0] == tr.cfg.run.batch_size // 2 and f1.requires_grad
    assert not torch.equal(z1, z2)
    expected = stats["loss_g_adv"] + 2.0 / (stats["mode_seeking_ratio"] + 1e-5)
    assert stats["loss_g"] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------
# Pixel loss with a decaying warm-up weight
# ----------------------------------------------------------------------------

def test_pixel_loss_and_weight_schedule():
    a, b = torch.zeros(2, 3), torch.tensor([[1.0, -1.0, 2.0], [0.0, 0.0, 0.0]])
    assert pixel_loss(a, b, "l1").item() == pytest.approx(4 / 6)
    assert pixel_loss(a, b, "l2").item() == pytest.approx(6 / 6)
    sched = [pixel_weight(s, 10.0, warmup=2, decay=4) for s in range(8)]
    assert sched == pytest.approx([10, 10, 10, 7.5, 5, 2.5, 0, 0])
    assert pixel_weight(100, 10.0, 2, 0) == 10.0  # no decay: the weight stays
    assert pixel_weight(100, 10.0, 0, 4, final=0.1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one shape"):
        pixel_loss(a, b[:1])


def test_pixel_loss_needs_a_target_and_uses_one_when_given(tmp_path):
    with pytest.raises(ConfigError, match="no target image"):
        _trainer("dcgan-mnist", tmp_path / "a", "pixel_loss=l1", "steps=1").train_step()

    class Paired(Trainer):  # a reconstructive setting: the target is a fixed image per batch
        def pixel_pair(self, fake, z, labels=None):
            return fake, torch.zeros_like(fake)

    tr = _trainer("dcgan-mnist", tmp_path / "b", "pixel_loss=l1", "pixel_weight=4", "pixel_warmup=1",
                  "pixel_decay=2", "steps=3", cls=Paired)
    weights = []
    for _ in range(3):
        stats = tr.train_step()
        weights.append(stats["pixel_weight"])
        assert stats["loss_g"] == pytest.approx(stats["loss_g_adv"] + stats["pixel_weight"] * stats["pixel_loss"],
                                                rel=1e-5)
    assert weights == [4.0, 4.0, 2.0]


# ----------------------------------------------------------------------------
# Weight decay per network
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["decoupled", "coupled"])
def test_weight_decay_shrinks_weights_with_zero_gradients(mode, tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "weight_decay_g=0.1", "weight_decay_d=0", f"weight_decay_mode={mode}",
                  "lr_g=0.01", "lr_d=0.01")
    for model, opt in ((tr.G, tr.opt_g), (tr.D, tr.opt_d)):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    g0 = [p.detach().clone() for p in tr.G.parameters()]
    d0 = [p.detach().clone() for p in tr.D.parameters()]
    tr.opt_g.step()
    tr.opt_d.step()
    for before, p in zip(g0, tr.G.parameters()):
        if mode == "decoupled":  # AdamW: p <- p (1 - lr wd), exactly
            torch.testing.assert_close(p.detach(), before * (1 - 0.01 * 0.1))
        else:  # coupled: the gradient is wd * p, which Adam's first step normalises to lr * sign(p)
            big = before.abs() > 1e-4  # (where wd * |p| >> Adam's eps)
            torch.testing.assert_close(p.detach()[big], (before - 0.01 * torch.sign(before))[big], atol=1e-5, rtol=0)
    assert all(torch.equal(b, p) for b, p in zip(d0, tr.D.parameters()))  # D: no decay, zero gradient
    assert isinstance(tr.opt_g, torch.optim.AdamW) == (mode == "decoupled")


def test_build_optimizer_choices_and_errors():
    p = [torch.nn.Parameter(torch.ones(3))]
    assert isinstance(build_optimizer(p, "adam", 1e-3), torch.optim.Adam)
    sgd = build_optimizer(p, "sgd", 1e-3, weight_decay=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="mode"):
        build_optimizer(p, "adam", 1e-3, mode="l1")
    with pytest.raises(ValueError, match="weight_decay"):
        build_optimizer(p, "adam", 1e-3, weight_decay=-1)
    assert not build_optimizer(p, "adam", 1e-3).defaults.get("fused")  # CPU: PyTorch's default Adam
    with pytest.raises(ValueError, match="fused_adam"):
        build_optimizer(p, "adam", 1e-3, fused_adam="yes")
    for wd, kind in ((0.0, torch.optim.Adam), (0.1, torch.optim.AdamW)):
        opt = build_optimizer(p, "adam", 1e-3, weight_decay=wd, fused_adam="on")
        assert type(opt) is kind and opt.defaults["fused"] is True and skips_on_device(opt)
    # torch's fused SGD leaves its momentum buffer uninitialised when its first step is skipped: never fused
    sgd = build_optimizer(p, "sgd", 1e-3, momentum=0.9, fused_adam="on")
    assert not sgd.defaults.get("fused") and not skips_on_device(sgd)
    assert not skips_on_device(build_optimizer(p, "adam", 1e-3, fused_adam="off"))


def test_a_skipped_device_step_changes_nothing_and_a_taken_one_matches_plain_step():
    """``step_unless_nonfinite``: False on the device leaves weights, moments and step counts bit for bit;
    True steps exactly as ``opt.step()`` (fused Adam and AdamW)."""
    for wd in (0.0, 0.1):
        p, q = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
        q.data.copy_(p.data)
        a, b = (build_optimizer([t], "adam", 1e-2, weight_decay=wd, fused_adam="on") for t in (p, q))
        for i in range(4):
            p.grad = torch.randn(5)
            q.grad = p.grad.clone()
            before = p.detach().clone(), {k: v.clone() for k, v in a.state[p].items()} if a.state else {}
            step_unless_nonfinite(a, torch.tensor(False))
            assert torch.equal(p.detach(), before[0])
            assert all(torch.equal(a.state[p][k], v) for k, v in before[1].items())
            step_unless_nonfinite(a, torch.tensor(True))
            b.step()
            assert torch.equal(p.detach(), q.detach()) and not hasattr(a, "found_inf")
            assert all(torch.equal(a.state[p][k], b.state[q][k]) for k in b.state[q])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_build_optimizer_uses_fused_adam_on_cuda():
    p = [torch.nn.Parameter(torch.ones(3, device="cuda"))]
    for mode, wd in (("coupled", 0.0), ("decoupled", 0.1)):
        opt = build_optimizer(p, "adam", 1e-3, weight_decay=wd, mode=mode)
        assert opt.defaults["fused"] is True
        p[0].grad = torch.ones_like(p[0])
        opt.step()
        assert torch.isfinite(p[0]).all() and not torch.equal(p[0].detach(), torch.ones(3, device="cuda"))


# ----------------------------------------------------------------------------
# Schedules: D pre-training and loss balancing
# ----------------------------------------------------------------------------

def test_d_pretraining_keeps_g_fixed_for_n_steps(tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "d_pretrain=3", "ema=0.9", "steps=5")
    g0, d0 = _snapshot(tr.G), _snapshot(tr.D)
    for step in range(3):
        stats = tr.train_step()
        assert not _changed(tr.G, g0), f"G changed during D pre-training (step {step + 1})"
        assert stats["g_updated"] == 0 and math.isfinite(stats["loss_g"])
    assert _changed(tr.D, d0)
    assert int(next(iter(tr.opt_d.state.values()))["step"]) == 3 and not tr.opt_g.state
    tr.train_step()
    assert _changed(tr.G, g0)


def test_step_schedule_decisions():
    s = StepSchedule(d_pretrain=2)
    assert [s.g_active(i) for i in range(4)] == [False, False, True, True]
    assert s.d_update(0.0) and s.g_update(0.0, True)  # no balancing: always
    b = StepSchedule(balance=True, d_above=0.5, g_above=1.0)
    assert b.d_update(0.6) and not b.d_update(0.4)
    assert b.g_update(1.1, d_stepped=True) and not b.g_update(0.9, d_stepped=True)
    assert b.g_update(0.9, d_stepped=False)  # nobody would learn: G steps
    assert b.d_update(float("nan"))  # a NaN goes on to the non-finite guard


@pytest.mark.parametrize("d_above,g_above,d_moves,g_moves", [
    (100.0, -100.0, False, True),   # D's loss is never above 100: D rests, G trains
    (-100.0, 100.0, True, False),   # D always trains; G's loss is never above 100 and D stepped: G rests
    (-100.0, -100.0, True, True),
])
def test_loss_balancing_steps_the_right_network(d_above, g_above, d_moves, g_moves, tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "balance=true", f"balance_d_above={d_above}",
                  f"balance_g_above={g_above}", "steps=2")
    g0, d0 = _snapshot(tr.G), _snapshot(tr.D)
    for _ in range(2):
        stats = tr.train_step()
    assert bool(_changed(tr.D, d0)) == d_moves and stats["d_updated"] == float(d_moves)
    assert bool(_changed(tr.G, g0)) == g_moves and stats["g_updated"] == float(g_moves)


def test_balance_help_carries_the_ganhacks_warning():
    from fastgan.train.config import describe_options

    text = describe_options()
    line = next(l for l in text.splitlines() if "optim.balance =" in l)
    assert "don't balance loss via statistics" in line and "ganhacks #11" in line


def test_schedules_resume_exactly(tmp_path):
    sets = ["d_pretrain=1", "balance=true", "balance_d_above=0.9", "balance_g_above=0.5", "mode_seeking=0.5",
            "g_dropout=0.2", "weight_decay_d=0.01", "steps=4"]
    whole = _trainer("toy-ring8", tmp_path / "whole", *sets)
    whole.train()
    part = _trainer("toy-ring8", tmp_path / "part", *sets)
    part.train(stop_after=2)
    from fastgan.train import train as train_fn

    cfg = load_config(preset="toy-ring8", sets=TINY_TOY + QUIET + [f"out={tmp_path / 'part'}", *sets])
    train_fn(cfg, resume=True, log=lambda s: None)
    from fastgan.train import load_checkpoint

    a = load_checkpoint(str(tmp_path / "whole" / "checkpoints" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "part" / "checkpoints" / "last.pt"))
    for part_name in ("generator", "discriminator"):
        for k in a[part_name]:
            assert torch.equal(a[part_name][k], b[part_name][k]), (part_name, k)


# ----------------------------------------------------------------------------
# Mode-collapse monitor
# ----------------------------------------------------------------------------

def _monitor(**kw):
    events = []
    return FailureMonitor(MonitorConfig(**kw), "nonsaturating", report=events.append), events


def test_monitor_low_diversity_fires_after_patience_and_arming():
    mon, events = _monitor(collapse_diversity=0.3, collapse_patience=2, collapse_after=100)
    mon.check_log(50, {"diversity": 0.01})
    mon.check_log(60, {"diversity": 0.01})
    assert not events  # not armed yet: an untrained G is not diverse
    mon.check_log(100, {"diversity": 0.1})
    assert not events
    mon.check_log(110, {"diversity": 0.1})
    assert [e["kind"] for e in events] == ["low_diversity"] and "0.100" in events[0]["message"]
    diverse, diverse_events = _monitor(collapse_diversity=0.3, collapse_patience=2, collapse_after=0)
    for step, div in enumerate([0.9, 0.2, 0.8, 0.25, 1.0]):  # dips, never two in a row
        diverse.check_log(step, {"diversity": div})
    assert not diverse_events
    state = mon.state_dict()
    assert state["low_diversity_run"] == 2


def _toy_diversity(tr, collapse: bool) -> float:
    if collapse:  # every z maps to one point: G's last layer ignores its input
        with torch.no_grad():
            tr.G.base.main[-1].weight.zero_()
    tr.d_step(keep_fake=False)
    return tr.quality_proxy()["diversity"]


@pytest.mark.parametrize("collapse", [True, False])
def test_monitor_fires_on_a_collapsed_generator_not_a_diverse_one(collapse, tmp_path):
    tr = _trainer("toy-ring8", tmp_path, "collapse_after=0", "collapse_patience=2", "collapse_diversity=0.2")
    rows = []
    for step in (1, 2):
        row = {"diversity": _toy_diversity(tr, collapse)}
        rows.append(row)
        tr.monitor.check_log(step, row)
    kinds = [e["kind"] for e in tr.monitor.events]
    if collapse:
        assert rows[-1]["diversity"] < 1e-3 and "low_diversity" in kinds
    else:
        assert rows[-1]["diversity"] > 0.2 and "low_diversity" not in kinds


def test_class_histogram_stats_and_probe():
    collapsed = torch.zeros(100, 10)
    collapsed[:, 3] = 5.0
    s = class_histogram_stats(collapsed)
    assert (s["gen_classes"], s["gen_classes_frac"], s["gen_class_top"]) == (1, 0.1, 1.0)
    assert s["gen_class_kl"] == pytest.approx(math.log(10))
    uniform = torch.eye(10).repeat(10, 1)
    u = class_histogram_stats(uniform)
    assert (u["gen_classes"], u["gen_class_kl"]) == (10, pytest.approx(0.0))
    # the probe classifies generate(z): a classifier by mean brightness, a G that covers 2 brightness bins
    clf = lambda x: torch.nn.functional.one_hot((x.mean((1, 2, 3)) * 4.99 + 5).long().clamp(0, 9), 10).float()  # noqa
    probe = ClassHistogramProbe(clf, torch.randn(40, 2))
    out = probe(lambda z, y: z[:, :1, None, None].sign().expand(-1, 1, 4, 4) * 0.5)
    assert out["gen_classes"] == 2


@pytest.mark.parametrize("collapse", [True, False])
def test_class_histogram_monitor_in_training(collapse, tmp_path, monkeypatch):
    """monitor.class_histogram with a stand-in classifier (the real one trains once, ~40 s): a G whose samples
    all fall in one class fires 'class_collapse'; one that spreads over the classes does not."""
    import fastgan.train.collapse as collapse_mod

    # classes by mean brightness of the sample: a diverse G spans several, a constant G one
    def fake_classifier(dataset, device, log=print):
        assert dataset == "mnist5k"
        return lambda x: torch.nn.functional.one_hot(
            ((x.mean((1, 2, 3)) - x.mean()) / (x.mean((1, 2, 3)).std() + 1e-12) * 2 + 5).long().clamp(0, 9),
            10).float() if not collapse else torch.nn.functional.one_hot(
            torch.full((x.shape[0],), 7), 10).float()

    monkeypatch.setattr(collapse_mod, "metrics_classifier", fake_classifier)
    tr = _trainer("dcgan-mnist", tmp_path, "class_histogram=true", "class_samples=64", "collapse_after=0",
                  "collapse_patience=2", "steps=2", "class_floor=0.5")
    summary = tr.train()
    final = summary["final"]
    kinds = [e["kind"] for e in summary["events"]]
    if collapse:
        assert final["gen_classes"] == 1 and "class_collapse" in kinds
    else:
        assert final["gen_classes"] >= 5 and "class_collapse" not in kinds
