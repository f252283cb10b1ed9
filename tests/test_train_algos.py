"""Issue 13 in the trainer: VAE-GAN / KL-GAN hybrids, the semi-supervised GAN, multiple generators (MGAN) and
the unrolled-GAN option (its maths is in test_unrolled.py), on tiny CPU models."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastgan.cli import main as cli_main
from fastgan.models import MLPGenerator, MultiHeadGenerator, generator_ids
from fastgan.train import ConfigError, Trainer, generate, load_checkpoint, load_config, load_generator
from fastgan.train.algos import generator_classifier_loss, kl_divergence, semi_supervised_d_loss
from fastgan.train.models import Discriminator

from _train_settings import QUIET
from _train_settings import TINY_TOY as _TINY_TOY

TINY_TOY = _TINY_TOY + ["semi_holdout=200"]


def _trainer(out, *sets, preset="toy-ring8", tiny=TINY_TOY, resume=None):
    cfg = load_config(preset=preset, sets=tiny + QUIET + [f"out={out}", *sets])
    return Trainer(cfg, resume=resume, log=lambda s: None)


def _rows(trainer):
    import json

    with open(trainer.metrics.path) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# Hybrids
# ----------------------------------------------------------------------------------------------

def test_kl_term_on_known_values():
    mu = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2): row 0 = 0.5 * (1 + (4 + 4 - 1 - log 4)); row 1 = 0
    expected = 0.5 * (1.0 + 7.0 - math.log(4.0)) / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    assert kl_divergence(mu, logvar).item() == pytest.approx(torch.distributions.kl_divergence(q, p).sum(1)
                                                             .mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="mu and logvar"):
        kl_divergence(mu, logvar[:, :1])


@pytest.mark.parametrize("kind", ["vae_gan", "kl_gan"])
def test_reconstruction_gradient_reaches_encoder_and_g_not_d(kind, tmp_path):
    t = _trainer(tmp_path, f"hybrid={kind}", "hybrid_kl_weight=0")
    real = t._prepare_real(t.stream.next()[0])
    for p in t.D.parameters():
        p.requires_grad_(False)  # as in the G step
    stats = {}
    loss = t.hybrid.g_loss(t, t.D, real, None, stats)
    loss.backward()
    assert stats["recon"] > 0 and stats["kl"] >= 0
    for module in (t.hybrid.encoder, t.G):
        norms = [p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None]
        assert norms and sum(norms) > 0
    assert all(p.grad is None for p in t.D.parameters())


def test_pixel_loss_applies_to_the_hybrid_reconstruction(tmp_path):
    """loss.pixel_loss with a hybrid: the reconstruction of the real batch is the prediction, the batch the target."""
    t = _trainer(tmp_path, "hybrid=kl_gan", "pixel_loss=l1", "pixel_weight=3", "pixel_warmup=5")
    stats = t.train_step()
    recon, real = t.hybrid.last_pair
    assert recon.shape == real.shape
    assert stats["pixel_weight"] == 3.0
    assert stats["pixel_loss"] == pytest.approx((recon.detach() - real).abs().mean().item(), rel=1e-5)


def test_training_reduces_reconstruction_error(tmp_path):
    t = _trainer(tmp_path, "hybrid=kl_gan", "hybrid_recon_weight=10", "hybrid_kl_weight=0.01", "steps=150",
                 "log_every=10")
    t.train()
    recon = [r["recon"] for r in _rows(t)]  # each a mean over 10 steps
    assert recon[-1] < 0.6 * recon[0], recon  # ~0.58 (the ring's variance: no reconstruction) -> ~0.25


def test_hybrid_resume_is_bit_identical(tmp_path):
    sets = ["hybrid=vae_gan", "steps=4"]
    straight = _trainer(tmp_path / "a", *sets)
    straight.train()
    first = _trainer(tmp_path / "b", *sets)
    first.train(stop_after=2)
    state = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pt"))
    second = _trainer(tmp_path / "b", *sets, resume=state)
    second.train()
    for a, b in ((straight.G, second.G), (straight.hybrid.encoder, second.hybrid.encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------
# Semi-supervised GAN
# ----------------------------------------------------------------------------------------------

def test_semi_supervised_loss_by_hand():
    lab = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    unl = torch.tensor([[1.0, 1.0, 1.0], [-2.0, 0.0, 0.0]])
    fake = torch.tensor([[0.0, -1.0, 0.5]])
    d = Discriminator(torch.nn.Identity(), 3, num_classes=3, conditional="semi")
    lse_unl, lse_fake = torch.logsumexp(unl, 1), torch.logsumexp(fake, 1)
    out = semi_supervised_d_loss(lab, y, lse_unl, lse_fake)
    ce = -(math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
           + math.log(math.exp(0.5) / (2 * math.exp(0.5) + math.exp(3)))) / 2
    z_unl = [3 * math.e, math.exp(-2) + 2]
    z_fake = 1 + math.exp(-1) + math.exp(0.5)
    # -log D(x) = -log(Z / (Z + 1)) on unlabelled reals, -log(1 - D(G(z))) = log(Z + 1) on fakes
    unsup = np.mean([-math.log(z / (z + 1)) for z in z_unl]) + math.log(z_fake + 1)
    assert out["supervised"].item() == pytest.approx(ce, rel=1e-6)
    assert out["unsupervised"].item() == pytest.approx(unsup, rel=1e-6)
    # the semi-supervised Discriminator's real / fake logit is that logsumexp
    d.classifier.weight.data.copy_(torch.eye(3))
    d.classifier.bias.data.zero_()
    d.base.features = lambda x: x
    torch.testing.assert_close(d.forward_all(unl)[0], lse_unl)


def test_semi_supervised_digits_beats_chance(tmp_path):
    tiny = ["image_size=16", "ngf=8", "ndf=8", "nz=16", "batch_size=32", "n_samples=4"]
    t = _trainer(tmp_path, "dataset=digits8x8", "semi_supervised=true", "labelled_per_class=10", "semi_holdout=300",
                 "feature_matching=1", "feature_matching_only=true", "d_norm=none", "lr_d=1e-3", "steps=40",
                 "log_every=20",
                 preset="dcgan-mnist", tiny=tiny)
    assert len(t.dataset) == 1797 - 300 and t.semi.x_lab.shape[0] == 100
    t.train()
    acc = _rows(t)[-1]["ssl_accuracy"]
    assert acc > 0.3, acc  # chance is 0.1; this run reached ~0.6 here


# ----------------------------------------------------------------------------------------------
# Multiple generators
# ----------------------------------------------------------------------------------------------

def test_samples_mix_the_generators():
    torch.manual_seed(0)
    g = MultiHeadGenerator([MLPGenerator(nz=3, hidden=8, depth=2, norm="none", impl="ref") for _ in range(3)])
    z = torch.randn(7, 3)
    mixed = g(z)
    for j in range(3):
        alone = g(z, torch.full((7,), j))
        rows = generator_ids(7, 3) == j
        torch.testing.assert_close(mixed[rows], alone[rows])
        assert not torch.allclose(mixed[~rows], alone[~rows])  # the other heads really differ
    with pytest.raises(ValueError, match="ids"):
        g(z, torch.full((7,), 3))


def test_generator_classifier_loss_is_cross_entropy_on_ids():
    d = Discriminator(torch.nn.Identity(), 5, num_generators=4)
    feats = torch.randn(10, 5)
    expected = F.cross_entropy(d.generator_classifier(feats), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]))
    torch.testing.assert_close(generator_classifier_loss(d, feats), expected)


def test_mgan_trains_checkpoints_and_samples(tmp_path, capsys):
    t = _trainer(tmp_path, "num_generators=3", "steps=3")
    t.train()
    row = _rows(t)[-1]
    assert math.isfinite(row["gen_cls_d"]) and math.isfinite(row["gen_cls_g"])
    ck = str(tmp_path / "checkpoints" / "last.pt")
    g = load_generator(ck)
    assert isinstance(g.base, MultiHeadGenerator) and g.base.num_generators == 3
    sa, sb = g.state_dict(), t.G.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    pts = generate(g, 9, seed=1)
    assert pts.shape == (9, 2) and torch.isfinite(pts).all()
    assert cli_main(["sample", ck, "--n", "9", "--out", str(tmp_path / "pts.npy")]) == 0
    assert np.load(tmp_path / "pts.npy").shape == (9, 2)


# ----------------------------------------------------------------------------------------------
# Unrolled GAN in the trainer, and the configuration checks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sets", [[], ["weight_decay_d=0.01"], ["weight_decay_d=0.01", "weight_decay_mode=coupled"]],
                         ids=["adam", "adamw", "adam-l2"])
def test_unrolled_option_trains(sets, tmp_path):
    t = _trainer(tmp_path, "unrolled_steps=2", "d_norm=batch", "steps=2", *sets)
    result = t.train()
    assert result["status"] == "done" and math.isfinite(_rows(t)[-1]["loss_g"])


def test_unrolled_g_step_differs_from_the_plain_one(tmp_path):
    grads = []
    for k in (0, 0, 3):
        t = _trainer(tmp_path / str(len(grads)), f"unrolled_steps={k}", "steps=1")
        t.train()
        grads.append(torch.cat([p.detach().flatten() for p in t.G.parameters()]))
    assert torch.equal(grads[0], grads[1])  # the plain step is deterministic ...
    assert not torch.allclose(grads[0], grads[2])  # ... and unrolling changes it


@pytest.mark.parametrize("sets,match", [
    (["unrolled_steps=2", "swap_prob=0.5"], "swap_prob"),
    (["unrolled_steps=2", "d_norm=vbn"], "VirtualBatchNorm"),
    (["hybrid=kl_gan", "z_dist=uniform"], "z_dist"),
    (["num_generators=2", "pack=2"], "packing"),
    (["num_generators=2", "replay_size=64"], "replay"),
    (["semi_supervised=true", "loss=hinge"], "minimax or"),
    (["semi_supervised=true", "conditional=acgan"], "conditional"),
    (["hybrid=bogus"], "hybrid"),
])
def test_bad_combinations_are_refused(sets, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        load_config(preset="toy-ring8", sets=TINY_TOY + QUIET + [f"out={tmp_path}", *sets])


def test_toy_comparison_writes_a_table(tmp_path):
    from fastgan.experiments.toy_compare import main

    out = tmp_path / "cmp.md"
    sets = ["--set", "hidden=16", "--set", "toy_samples=2000", "--set", "batch_size=32", "--set", "impl=ref"]
    assert main(["--out", str(out), "--datasets", "ring8", "--steps", "2", "--only", "baseline", "MGAN K=4",
                 "--add-variant", "mine", "label_flip=0.1", "--workdir", str(tmp_path / "runs"), *sets]) == 0
    text = out.read_text()
    assert "2 generator steps per run, seeds 0" in text
    rows = [line for line in text.splitlines() if line.startswith("| ring8 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["baseline", "MGAN K=4"]  # --only filters, in order
    assert "`num_generators=4`" in rows[1] and "/ 8 |" in rows[0]
