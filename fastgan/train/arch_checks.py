"""Validation of the issue-13 options (residual / attention models, dropout, extra losses, schedules, the
mode-collapse monitor); ``fastgan.train.config.validate`` adds these lines to its own."""
from __future__ import annotations


def check_issue13_options(cfg) -> list[str]:
    errors = []
    d, m, lo, mon = cfg.data, cfg.model, cfg.loss, cfg.monitor
    arch = cfg.resolved_arch()
    toy = cfg.is_toy()
    if arch == "resnet":
        if toy:
            errors.append(f"model.arch: 'resnet' needs an image data set, but data.dataset is {d.dataset!r} "
                          "(use mlp)")
        elif d.image_size < 8 or d.image_size & (d.image_size - 1):
            errors.append(f"data.image_size: the ResNet models need a power of two >= 8, got {d.image_size}")
        elif m.attention_res:
            k = d.image_size.bit_length() - 3
            sides = sorted({4 * 2 ** (i + 1) for i in range(k)} & {d.image_size // 2 ** (i + 1) for i in range(k)})
            if m.attention_res not in sides:
                errors.append(f"model.attention_res: {m.attention_res} is not a feature-map side of both the "
                              f"{d.image_size}px generator and discriminator; choose one of {sides} (or 0)")
        if m.upsample != "convtranspose":
            errors.append("model.upsample: the ResNet generator upsamples by nearest neighbour + conv; "
                          "pixelshuffle is for dcgan")
    elif m.attention_res:
        errors.append(f"model.attention_res: self-attention blocks are in the ResNet models; set model.arch: resnet "
                      f"(got {arch!r})")
    if m.g_dropout_sampling and m.g_dropout <= 0:
        errors.append("model.g_dropout_sampling: set model.g_dropout > 0 too")
    if m.g_dropout > 0 and m.g_norm == "vbn":
        errors.append("model.g_dropout: not with g_norm='vbn' (the reference batch would see other dropout masks)")
    if lo.pixel_loss != "none" and lo.pixel_weight <= 0:
        errors.append("loss.pixel_loss: set loss.pixel_weight > 0 too")
    if lo.mode_seeking > 0 and cfg.run.batch_size < 2:
        errors.append("loss.mode_seeking: needs run.batch_size >= 2 (pairs of latents)")
    if mon.class_histogram:
        from ..metrics.classifier import classifier_dataset

        if toy or classifier_dataset(d.dataset) is None:
            errors.append(f"monitor.class_histogram: no classifier for data set {d.dataset!r} (there are classifiers "
                          "for mnist5k, mnist, fashion-mnist; toy data logs modes covered anyway)")
        elif m.conditional != "none":
            errors.append("monitor.class_histogram: a conditional G is told its classes; use it without "
                          "model.conditional")
    return errors
