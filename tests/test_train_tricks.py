"""Each trainer trick does what it says (unit level), and the losses are the stated formulas."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.train import losses as L
from fastgan.train.monitor import FailureMonitor, TrainingDiverged
from fastgan.train.config import MonitorConfig
from fastgan.train.tricks import (EMA, HistoricalAverage, ReplayBuffer, SnapshotPool, add_instance_noise, d_targets,
                                  instance_noise_std, pack, sample_z, slerp, slerp_grid)


# ----------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------

def test_one_sided_label_smoothing():
    real = d_targets(1000, True, smoothing=0.1)
    fake = d_targets(1000, False, smoothing=0.1)
    assert torch.all(real == 0.9) and torch.all(fake == 0.0)  # only the real side is smoothed


def test_random_label_smoothing_ranges():
    real = d_targets(5000, True, random=True, real_range=(0.7, 1.2), fake_range=(0.0, 0.3))
    fake = d_targets(5000, False, random=True, real_range=(0.7, 1.2), fake_range=(0.0, 0.3))
    assert real.min() >= 0.7 and real.max() <= 1.2 and real.std() > 0.1
    assert fake.min() >= 0.0 and fake.max() <= 0.3 and fake.std() > 0.05


def test_noisy_label_flips_at_the_rate():
    torch.manual_seed(0)
    real = d_targets(20000, True, flip=0.1)
    assert set(real.unique().tolist()) == {0.0, 1.0}
    assert abs((real == 0).float().mean().item() - 0.1) < 0.01
    fake = d_targets(20000, False, flip=0.25, smoothing=0.1)
    assert abs((fake == 0.9).float().mean().item() - 0.25) < 0.015  # a flipped fake gets the real target


# ----------------------------------------------------------------------------
# Replay buffer
# ----------------------------------------------------------------------------

def test_replay_mixes_old_fakes_at_the_ratio():
    buf = ReplayBuffer(64, ratio=0.25)
    new = torch.zeros(32, 1, 4, 4)
    mixed, _ = buf.mix(new)
    assert torch.equal(mixed, new)  # empty buffer: nothing replayed
    buf.push(torch.full((64, 1, 4, 4), 7.0))
    assert len(buf) == 64
    mixed, _ = buf.mix(new)
    old_rows = (mixed.flatten(1) == 7.0).all(1)
    assert int(old_rows.sum()) == 8 and old_rows[:8].all()  # round(0.25 * 32) rows from the buffer


def test_replay_push_replaces_a_share_when_full_and_keeps_labels():
    torch.manual_seed(0)
    buf = ReplayBuffer(40, ratio=0.5)
    buf.push(torch.zeros(40, 2), torch.zeros(40, dtype=torch.long))
    buf.push(torch.ones(10, 2), torch.full((10,), 3))
    assert int((buf.data == 1).all(1).sum()) == 5  # round(0.5 * 10) slots overwritten
    assert torch.equal((buf.data == 1).all(1), buf.labels == 3)
    state = buf.state_dict()
    other = ReplayBuffer(40, 0.5)
    other.load_state_dict(state)
    assert torch.equal(other.data, buf.data) and torch.equal(other.labels, buf.labels)


# ----------------------------------------------------------------------------
# Instance noise
# ----------------------------------------------------------------------------

def test_instance_noise_decays_linearly_to_zero():
    assert instance_noise_std(0, 0.2, 100) == pytest.approx(0.2)
    assert instance_noise_std(50, 0.2, 100) == pytest.approx(0.1)
    assert instance_noise_std(100, 0.2, 100) == 0.0
    assert instance_noise_std(150, 0.2, 100) == 0.0
    assert instance_noise_std(7, 0.0, 100) == 0.0
    x = torch.zeros(200000)
    torch.manual_seed(0)
    assert add_instance_noise(x, 0.3).std().item() == pytest.approx(0.3, rel=0.02)
    assert add_instance_noise(x, 0.0) is x


# ----------------------------------------------------------------------------
# EMA, historical averaging, snapshots
# ----------------------------------------------------------------------------

def test_ema_update_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, beta=0.9, start=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves the BN buffers
    ema.update(model, step=0)  # before start: a copy
    for pe, p in zip(ema.model.parameters(), model.parameters()):
        assert torch.equal(pe, p)
    old = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    ema.update(model, step=2)
    for pe, po, p in zip(ema.model.parameters(), old, model.parameters()):
        torch.testing.assert_close(pe, 0.9 * po + 0.1 * p)
    for be, b in zip(ema.model.buffers(), model.buffers()):
        assert torch.equal(be, b)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())


def test_historical_averaging_is_the_running_mean():
    model = nn.Linear(2, 2)
    hist = HistoricalAverage(model, weight=0.5)
    history = []
    for k in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(k))
        hist.update(model)
        history.append(float(k))
    mean = sum(history) / len(history)
    assert all(torch.allclose(m, torch.full_like(m, mean)) for m in hist.mean)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    n = sum(p.numel() for p in model.parameters())
    assert hist.penalty(model).item() == pytest.approx(0.5 * n * (3.0 - mean) ** 2)


def test_snapshot_pool_swaps_in_old_weights():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    pool = SnapshotPool(model, every=2, size=2, prob=1.0)
    assert pool.draw() is None  # nothing kept yet
    saved = {}
    for step in range(1, 8):
        with torch.no_grad():
            model.weight.fill_(float(step))
        if pool.maybe_snapshot(step, model):
            saved[step] = float(step)
    assert pool.steps == [4, 6]  # every 2 steps, the last 2
    i = pool.draw()
    old = pool.load(i, model)
    assert old is not model and old.weight[0, 0].item() == pool.steps[i]
    assert model.weight[0, 0].item() == 7.0
    pool.prob = 0.0
    assert pool.draw() is None


# ----------------------------------------------------------------------------
# Packing, latents
# ----------------------------------------------------------------------------

def test_pack_concatenates_consecutive_samples_along_channels():
    x = torch.arange(6 * 2 * 3 * 3, dtype=torch.float32).reshape(6, 2, 3, 3)
    p = pack(x, 3)
    assert p.shape == (2, 6, 3, 3)
    torch.testing.assert_close(p[1], torch.cat([x[3], x[4], x[5]], 0))
    pts = torch.randn(8, 2)
    torch.testing.assert_close(pack(pts, 2)[3], torch.cat([pts[6], pts[7]]))
    assert pack(x, 1) is x
    with pytest.raises(ValueError, match="multiple of the pack size"):
        pack(x, 4)


def test_gaussian_and_uniform_z():
    torch.manual_seed(0)
    z = sample_z(20000, 4, "normal")
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    u = sample_z(20000, 4, "uniform")
    assert u.min() >= -1 and u.max() <= 1 and abs(u.std().item() - 1 / math.sqrt(3)) < 0.02
    with pytest.raises(ValueError):
        sample_z(2, 2, "cauchy")


def test_slerp_ends_and_norm():
    torch.manual_seed(0)
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)  # equal norms: slerp stays on the sphere
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid.norm(dim=1), a.norm(dim=1))
    grid = slerp_grid(torch.randn(16, 8), rows=8, steps=8)
    assert grid.shape == (64, 8)


# ----------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------

def test_losses_match_their_formulas():
    torch.manual_seed(0)
    r, f = torch.randn(16), torch.randn(16)
    s = torch.sigmoid
    torch.testing.assert_close(L.d_loss("minimax", r, f), -(s(r).log().mean() + (1 - s(f)).log().mean()))
    torch.testing.assert_close(L.g_loss("minimax", f), (1 - s(f)).log().mean())
    torch.testing.assert_close(L.g_loss("nonsaturating", f), -s(f).log().mean())
    torch.testing.assert_close(L.d_loss("lsgan", r, f), 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean())
    torch.testing.assert_close(L.g_loss("lsgan", f), 0.5 * ((f - 1) ** 2).mean())
    torch.testing.assert_close(L.d_loss("hinge", r, f), F.relu(1 - r).mean() + F.relu(1 + f).mean())
    torch.testing.assert_close(L.g_loss("hinge", f), -f.mean())
    torch.testing.assert_close(L.d_loss("wasserstein", r, f), f.mean() - r.mean())
    torch.testing.assert_close(L.g_loss("wasserstein", f), -f.mean())
    # smoothed targets reach the loss
    t = torch.full((16,), 0.9)
    torch.testing.assert_close(L.d_loss_real("nonsaturating", r, t), F.binary_cross_entropy_with_logits(r, t))
    torch.testing.assert_close(L.d_loss_real("lsgan", r, t), 0.5 * ((r - 0.9) ** 2).mean())
    with pytest.raises(ValueError, match="loss must be one of"):
        L.g_loss("kl", f)


def test_feature_matching_loss():
    real, fake = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2, requires_grad=True)
    expected = (real.flatten(1).mean(0) - fake.flatten(1).mean(0)).square().sum()
    got = L.feature_matching_loss(real, fake)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert fake.grad is not None


# ----------------------------------------------------------------------------
# Failure monitor
# ----------------------------------------------------------------------------

def _monitor(**kw):
    events = []
    cfg = MonitorConfig(**kw)
    return FailureMonitor(cfg, "nonsaturating", report=events.append), events


def test_monitor_d_loss_to_zero_and_grad_norm():
    mon, events = _monitor(d_loss_patience=5, hint_every=1000)
    for step in range(1, 5):
        mon.check_step(step, {"loss_d": 1e-4})
    assert not events
    mon.check_step(5, {"loss_d": 1e-4})
    assert [e["kind"] for e in events] == ["d_loss_zero"] and "Hint:" in events[0]["message"]
    mon.check_step(6, {"loss_d": 1e-4})
    assert len(events) == 1  # not repeated within hint_every
    mon.check_step(7, {"loss_d": 0.5, "grad_d": 150.0, "grad_g": 3.0})
    assert events[-1]["kind"] == "grad_norm" and "D's gradient norm 150" in events[-1]["message"]


TARGET_TRICKS = [dict(), dict(smoothing=0.1), dict(random=True), dict(random=True, real_range=(0.7, 1.2)),
                 dict(flip=0.1), dict(smoothing=0.2, flip=0.05), dict(random=True, flip=0.2)]


# (targets above 1 only with LSGAN: BCE has no minimum there, and the trainer refuses them)
LOSS_TRICKS = [(kind, tricks) for kind in ("nonsaturating", "lsgan") for tricks in TARGET_TRICKS
               if kind == "lsgan" or tricks.get("real_range", (0, 1))[1] <= 1]


@pytest.mark.parametrize("kind,tricks", LOSS_TRICKS,
                         ids=[f"{k}-" + (",".join(f"{a}={v}" for a, v in t.items()) or "plain") for k, t in LOSS_TRICKS])
def test_d_loss_minimum_is_what_the_best_constant_output_scores(kind, tricks):
    # D cannot tell a sample's random target: its best output per side is the side's mean target; the loss there,
    # on many drawn targets, is d_loss_minimum, and any other output scores more
    torch.manual_seed(0)
    n = 400_000
    t_real = d_targets(n, True, **tricks).double()
    t_fake = d_targets(n, False, **tricks).double()
    least = L.d_loss_minimum(kind, **tricks)

    def loss(shift):
        out = []
        for t in (t_real, t_fake):
            m = t.mean().clamp(1e-6, 1 - 1e-6) if kind != "lsgan" else t.mean()
            out.append(torch.logit(m) + shift if kind != "lsgan" else m + shift)
        lr, lf = (torch.full((n,), float(o), dtype=torch.float64) for o in out)
        return L.d_loss(kind, lr, lf, t_real, t_fake).item()

    assert loss(0.0) == pytest.approx(least, abs=3e-3)
    assert loss(0.3) > least and loss(-0.3) > least
    if not tricks:
        assert least == 0.0


def test_monitor_d_loss_floor_counts_from_what_label_tricks_allow():
    # one-sided smoothing 0.1: a perfect D's BCE is H(0.9) = 0.325, so "D loss -> 0" meant it could never fire
    least = L.d_loss_minimum("nonsaturating", smoothing=0.1)
    assert least == pytest.approx(0.3251, abs=1e-4)
    events = []
    mon = FailureMonitor(MonitorConfig(d_loss_patience=3, hint_every=1000), "nonsaturating", report=events.append,
                         loss_d_minimum=least)
    for step in range(1, 4):
        mon.check_step(step, {"loss_d": least + 0.004})
    assert [e["kind"] for e in events] == ["d_loss_zero"] and "its least 0.325" in events[0]["message"]
    mon, events = _monitor(d_loss_patience=3)  # without the floor, the same losses are no alarm at all ...
    for step in range(1, 4):
        mon.check_step(step, {"loss_d": least + 0.004})
    assert not events


def test_monitor_hints_leave_out_what_the_run_already_does():
    from fastgan.train import load_config
    from fastgan.train.monitor import HINTS, hint

    wgan = load_config(preset="wgan-gp-mnist")  # a gradient penalty already: not suggested again
    assert hint("grad_norm", wgan) == "exploding gradients; try a lower learning rate or spectral norm"
    assert "gradient penalty" not in hint("nonfinite", wgan) and "gradient penalty" in HINTS["nonfinite"]
    events = []
    mon = FailureMonitor(MonitorConfig(), "wasserstein", report=events.append, train_cfg=wgan)
    mon.check_step(1, {"grad_d": 500.0})
    assert events and events[0]["message"].endswith("Hint: exploding gradients; try a lower learning rate or "
                                                    "spectral norm")
    # a run with every remedy of a kind already on still gets its meaning (it raised IndexError mid-run)
    every = load_config(preset="toy-ring8", sets=["mode_seeking=1", "minibatch=stddev", "pack=2", "unrolled_steps=1"])
    assert hint("low_diversity", every).startswith("the samples are much less diverse than the data")


def test_monitor_nonfinite_stops_after_patience():
    mon, events = _monitor(nonfinite_patience=2)
    mon.nonfinite(3, "D's loss")
    mon.finite_step()
    mon.nonfinite(5, "D's loss")
    with pytest.raises(TrainingDiverged, match="2 non-finite steps in a row"):
        mon.nonfinite(6, "G's loss")
    assert [e["kind"] for e in events] == ["nonfinite"] * 3


def test_monitor_g_loss_falling_while_diversity_drops():
    mon, events = _monitor(collapse_window=4, diversity_floor=0.5)
    for i, (g, div) in enumerate([(2.0, 0.9), (1.8, 0.7), (1.5, 0.5), (1.2, 0.3)]):
        mon.check_log(100 * (i + 1), {"loss_g": g, "diversity": div})
    assert [e["kind"] for e in events] == ["collapse"]
    assert "sample diversity drops" in events[0]["message"]
    mon2, events2 = _monitor(collapse_window=4)
    for i, g in enumerate([2.0, 1.8, 1.5, 1.2]):  # G improving while diversity holds: fine
        mon2.check_log(i, {"loss_g": g, "diversity": 1.0})
    assert not events2
