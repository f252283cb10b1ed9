"""The trainer's glue for issue 13's algorithms: unrolled GAN, VAE-GAN / KL-GAN hybrids, the semi-supervised
GAN and multiple generators (MGAN).  Each is off by default; :func:`attach` gives a :class:`Trainer` the
pieces its configuration turns on, and the trainer calls the hooks below from its D and G steps.

=========================  ==============================================================================
option                     what it does (source)
=========================  ==============================================================================
``loss.unrolled_steps K``  G's loss against D after K differentiable steps of D's optimiser (Metz et al.
                           2017); :mod:`.unrolled`
``loss.hybrid vae_gan``    encoder q(z|x); G also minimises KL + ||f_D(x) - f_D(G(z~q))||^2 (D's features)
                           and D also judges the reconstructions G(z~q) as fakes (Larsen et al. 2016)
``loss.hybrid kl_gan``     encoder; G also minimises KL + ||x - G(z~q)||^2 in pixels (ganhacks #16)
``loss.semi_supervised``   D = K-class classifier, D(x) = Z / (Z + 1); D also minimises the cross-entropy on
                           ``labelled_per_class`` labelled examples per class (Salimans et al. 2016, sec. 5)
``model.num_generators K`` K generators sharing all but the first layer; D's extra head classifies which one
                           made a fake, D and G both minimise beta x that cross-entropy (Hoang et al. 2018)
=========================  ==============================================================================
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F

from ..models import Encoder, build_encoder, generator_ids
from . import losses as L
from .tricks import pack as pack_fn
from .unrolled import check_unrollable, unroll


# ----------------------------------------------------------------------------------------------
# Configuration checks (called from config.validate)
# ----------------------------------------------------------------------------------------------

def config_errors(cfg) -> list[str]:
    m, lo, t, r = cfg.model, cfg.loss, cfg.tricks, cfg.run
    errors = []
    if lo.unrolled_steps:
        if t.swap_prob > 0:
            errors.append("loss.unrolled_steps: unrolls the live D; not with tricks.swap_prob (old D snapshots)")
        if m.d_norm == "vbn":
            errors.append("loss.unrolled_steps: the discriminator's VirtualBatchNorm layers cannot be unrolled "
                          "(their reference pass is not replayed); use another model.d_norm")
        if r.amp == "fp16":
            errors.append("loss.unrolled_steps: not with run.amp='fp16' (the unrolled gradients bypass the "
                          "gradient scaler); use bf16 or off")
    if lo.hybrid != "none" and m.z_dist != "normal":
        errors.append(f"loss.hybrid: {lo.hybrid!r} matches q(z|x) to N(0, I), so it needs model.z_dist='normal'")
    if m.num_generators > 1:
        if cfg.resolved_arch() == "resnet":
            errors.append("model.num_generators: MGAN's shared-trunk generators are built for model.arch dcgan "
                          "or mlp (their first layer reads z), not resnet")
        if t.replay_size:
            errors.append("model.num_generators: replayed fakes lose their generator ids; turn tricks.replay_size off")
        if t.pack > 1:
            errors.append("model.num_generators: packing mixes the generators of a pack; turn tricks.pack off")
    if lo.semi_supervised:
        if m.conditional != "none":
            errors.append("loss.semi_supervised: D is the classifier and G is unconditional; set "
                          "model.conditional='none'")
        if lo.loss not in ("minimax", "nonsaturating"):
            errors.append(f"loss.semi_supervised: D(x) = Z / (Z + 1) is a probability: use loss minimax or "
                          f"nonsaturating, not {lo.loss!r}")
        if t.pack > 1:
            errors.append("loss.semi_supervised: packing mixes the labels of a pack; turn tricks.pack off")
    return errors


# ----------------------------------------------------------------------------------------------
# Unrolled GAN
# ----------------------------------------------------------------------------------------------

def unrolled_discriminator(trainer, fake: torch.Tensor, y_real=None, y_fake=None):
    """D after ``loss.unrolled_steps`` differentiable steps of its optimiser on the adversarial D loss of
    (the last real batch, ``fake``); ``fake`` keeps its graph so G's loss differentiates through the steps.
    Only the adversarial loss is unrolled (no penalty, label smoothing or auxiliary terms)."""
    kind, t = trainer.cfg.loss.loss, trainer.cfg.tricks
    sigma = trainer.noise_std()
    real_in = trainer._d_input(trainer._last_real, sigma)
    fake_in = trainer._d_input(fake, sigma)
    y_real, y_fake = trainer._labels_for_d(y_real), trainer._labels_for_d(y_fake)

    def d_loss(fd):
        if t.separate_batches:
            return L.d_loss(kind, fd(real_in, y_real), fd(fake_in, y_fake))
        n = real_in.shape[0]
        both = torch.cat([real_in, fake_in], 0)
        yb = None if y_real is None else torch.cat([y_real, y_fake], 0)
        out = fd(both, yb)
        return L.d_loss(kind, out[:n], out[n:])

    return unroll(trainer.D, d_loss, trainer.cfg.loss.unrolled_steps, trainer.opt_d)


# ----------------------------------------------------------------------------------------------
# VAE-GAN / KL-GAN
# ----------------------------------------------------------------------------------------------

def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over z's dimensions, mean over the batch."""
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mu and logvar must both be (N, nz), got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return (-0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(1)).mean()


class Hybrid:
    """The encoder, its optimiser (G's rule and learning rate) and the hybrid loss terms."""

    def __init__(self, trainer):
        cfg, spec = trainer.cfg, trainer.spec
        m, o = cfg.model, cfg.optim
        self.kind = cfg.loss.hybrid
        self.kl_weight, self.recon_weight = cfg.loss.hybrid_kl_weight, cfg.loss.hybrid_recon_weight
        dk = spec["discriminator"]["kwargs"]
        if spec["discriminator"]["arch"] == "dcgan":
            enc = build_encoder("dcgan", m.nz, image_size=dk["image_size"], channels=spec["data"]["channels"],
                                ndf=m.ndf, norm="batch", activation="leaky_relu", fused=m.fused, impl=m.impl)
        else:
            enc = build_encoder("mlp", m.nz, hidden=m.hidden, depth=m.depth, in_features=2, norm="batch",
                                activation="leaky_relu", fused=m.fused, impl=m.impl)
        self.encoder: Encoder = enc.to(trainer.device)
        self.opt = trainer._optimizer(self.encoder, o.optimizer_g, o.lr_g, 0.0)
        self.last_pair = None  # (reconstruction, real) of the last G step: loss.pixel_loss's target

    def _reconstruct(self, trainer, real, y_real, grad: bool):
        with torch.set_grad_enabled(grad):
            mu, logvar = self.encoder(real)
            z = Encoder.sample(mu, logvar).to(real.dtype)
            recon = trainer.G_train(z, y_real if trainer.num_classes else None)
        return mu, logvar, z, recon

    def d_loss(self, trainer, real, y_real) -> Optional[torch.Tensor]:
        """VAE-GAN's D also judges reconstructions as fakes; None for kl_gan."""
        if self.kind != "vae_gan":
            return None
        _, _, _, recon = self._reconstruct(trainer, real, y_real, grad=False)
        y = trainer._labels_for_d(y_real)
        return L.d_loss_fake(trainer.cfg.loss.loss, trainer.D(trainer._d_input(recon, trainer.noise_std()), y))

    def g_loss(self, trainer, d_adv, real, y_real, stats: dict) -> torch.Tensor:
        """KL + reconstruction (+ VAE-GAN's adversarial term on reconstructions); zeroes the encoder's grads,
        which G's backward then fills."""
        self.opt.zero_grad(set_to_none=True)
        mu, logvar, z, recon = self._reconstruct(trainer, real, y_real, grad=True)
        kl = kl_divergence(mu, logvar)
        self.last_pair = (recon, real)
        if self.kind == "kl_gan":
            rec = F.mse_loss(recon.float(), real.float())
            loss = self.kl_weight * kl + self.recon_weight * rec
        else:  # reconstruction error in D's feature space (D's last hidden layer; D's weights are frozen here)
            p = trainer.cfg.tricks.pack
            y = trainer._labels_for_d(y_real)
            with torch.no_grad():
                target = d_adv.forward_all(pack_fn(real, p), y)[2]
            feat = d_adv.forward_all(pack_fn(recon, p), y)[2]
            rec = F.mse_loss(feat.float(), target.float())
            # G (the decoder) also tries to pass its reconstructions of z ~ q(z|x) off as real; the encoder
            # gets only KL + reconstruction, as in Larsen et al.
            recon_g = trainer.G_train(z.detach(), y_real if trainer.num_classes else None)
            adv = L.g_loss(trainer.cfg.loss.loss, d_adv(trainer._d_input(recon_g, trainer.noise_std()), y))
            loss = self.kl_weight * kl + self.recon_weight * rec + adv
            stats["loss_g_recon_adv"] = adv.detach()
        stats.update(kl=kl.detach(), recon=rec.detach())
        return loss

    def step(self, finite: bool) -> None:
        if finite:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.opt.load_state_dict(state["opt"])


# ----------------------------------------------------------------------------------------------
# Semi-supervised GAN
# ----------------------------------------------------------------------------------------------

def semi_supervised_d_loss(class_logits_labelled: torch.Tensor, labels: torch.Tensor,
                           logits_unlabelled: torch.Tensor, logits_fake: torch.Tensor) -> dict:
    """Salimans et al. 2016, sec. 5, with D(x) = Z / (Z + 1), Z = sum_k exp(l_k):
    supervised = CE(l(x_lab), y); unsupervised = -log D(x_unl) - log(1 - D(G(z))) with the logit
    logsumexp(l) (``logits_*`` here are those logsumexps, as :class:`Discriminator` returns them)."""
    sup = F.cross_entropy(class_logits_labelled.float(), labels)
    unsup = L.d_loss("minimax", logits_unlabelled, logits_fake)
    return {"supervised": sup, "unsupervised": unsup}


def _subset(dataset, idx: torch.Tensor):
    """A copy of an in-memory data set with only the rows ``idx`` (images or toy points)."""
    out = copy.copy(dataset)
    if hasattr(dataset, "images"):
        out.images, out.labels = dataset.images[idx].contiguous(), dataset.labels[idx]
    elif hasattr(dataset, "points"):
        out.points, out.modes = dataset.points[idx], dataset.modes[idx]
    else:
        raise ValueError("loss.semi_supervised needs an in-memory data set (the shipped digits, Fashion-MNIST, "
                         f"the toy sets), not {type(dataset).__name__}")
    return out


def _labels_of(dataset) -> torch.Tensor:
    return dataset.labels if hasattr(dataset, "labels") else dataset.modes


class SemiSupervised:
    """The data split (held-out / training; ``labelled_per_class`` labelled training examples per class),
    the supervised D loss on a labelled minibatch, and the held-out accuracy."""

    def __init__(self, trainer, dataset):
        lo, seed = trainer.cfg.loss, trainer.cfg.run.seed
        self.weight = lo.semi_weight
        labels = _labels_of(dataset)
        n = labels.shape[0]
        k = int(dataset.num_classes)
        if lo.semi_holdout >= n:
            raise ValueError(f"loss.semi_holdout: {lo.semi_holdout} is not smaller than the data set ({n})")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 13))
        held, train = perm[:lo.semi_holdout], perm[lo.semi_holdout:]
        self.train_dataset = _subset(dataset, train)
        tl = labels[train]
        chosen = []
        for c in range(k):
            rows = (tl == c).nonzero().squeeze(1)[:lo.labelled_per_class]
            if rows.numel() < lo.labelled_per_class:
                raise ValueError(f"loss.labelled_per_class: class {c} has only {rows.numel()} training examples")
            chosen.append(rows)
        lab = torch.cat(chosen)
        held_set, lab_set = _subset(dataset, held), _subset(self.train_dataset, lab)
        dev = trainer.device
        self.x_lab, self.y_lab = [t.to(dev) for t in lab_set.tensors()]
        self.x_held, self.y_held = [t.to(dev) for t in held_set.tensors()]
        self.num_classes = k
        self.batch = min(trainer.cfg.run.batch_size, self.x_lab.shape[0])

    def d_loss(self, trainer, stats: dict) -> torch.Tensor:
        idx = torch.randint(0, self.x_lab.shape[0], (self.batch,), device=self.x_lab.device)
        x = trainer._d_input(trainer._prepare_real(self.x_lab[idx]), trainer.noise_std())
        cls = trainer.D.forward_all(x)[1]
        sup = F.cross_entropy(cls.float(), self.y_lab[idx])
        stats["ssl_supervised"] = sup.detach()
        stats["ssl_train_acc"] = (cls.argmax(1) == self.y_lab[idx]).float().mean().detach()
        return self.weight * sup

    @torch.no_grad()
    def accuracy(self, trainer) -> dict:
        d = trainer.D
        was = d.training
        d.eval()
        try:
            right = 0
            for i in range(0, self.x_held.shape[0], 512):
                x = trainer._prepare_real(self.x_held[i:i + 512])
                right += (d.forward_all(x)[1].argmax(1) == self.y_held[i:i + 512]).sum().item()
        finally:
            d.train(was)
        return {"ssl_accuracy": right / self.x_held.shape[0]}


# ----------------------------------------------------------------------------------------------
# MGAN
# ----------------------------------------------------------------------------------------------

def generator_classifier_loss(d, features: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of D's generator-classifier head on a fake batch whose sample i came from generator
    i % K (:func:`fastgan.models.generator_ids`)."""
    head = d.generator_classifier
    logits = head(features.flatten(1).to(head.weight.dtype)).float()
    return F.cross_entropy(logits, generator_ids(logits.shape[0], logits.shape[1], logits.device))


# ----------------------------------------------------------------------------------------------
# Wiring
# ----------------------------------------------------------------------------------------------

def attach(trainer) -> None:
    """Set ``trainer.hybrid`` (None when off) and check that D can be unrolled (``trainer.semi`` is set before
    the data stream is built: it splits the data set)."""
    lo = trainer.cfg.loss
    trainer.hybrid = Hybrid(trainer) if lo.hybrid != "none" else None
    if lo.unrolled_steps:
        check_unrollable(trainer.D)


def state_dict(trainer) -> dict:
    return {"hybrid": trainer.hybrid.state_dict() if trainer.hybrid is not None else None}


def load_state_dict(trainer, state: Optional[dict]) -> None:
    if trainer.hybrid is not None and state and state.get("hybrid") is not None:
        trainer.hybrid.load_state_dict(state["hybrid"])
