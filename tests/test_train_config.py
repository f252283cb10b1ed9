"""Trainer configuration: presets (and their files in configs/), YAML, overrides, validation messages."""
import os

import pytest
import yaml

from fastgan.train.config import (PRESETS, ConfigError, TrainConfig, describe_options, load_config, preset_config,
                                  preset_yaml, tricks, validate)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_match_their_files(name):
    cfg = validate(preset_config(name))
    path = os.path.join(ROOT, "configs", f"{name}.yaml")
    assert os.path.isfile(path), "regenerate with: python -m fastgan.train.config --write-presets configs"
    assert open(path).read() == preset_yaml(name), "configs/ is stale: python -m fastgan.train.config " \
                                                   "--write-presets configs"
    from_file = load_config(path)
    assert from_file.to_dict() | {"preset": None} == cfg.to_dict() | {"preset": None}


def test_required_presets_and_their_settings():
    assert {"dcgan-mnist", "wgan-gp-mnist", "toy-ring8", "toy-grid25"} <= set(PRESETS)
    w = preset_config("wgan-gp-mnist")
    assert (w.loss.loss, w.loss.penalty, w.model.d_norm, w.optim.n_critic) == ("wasserstein", "wgan-gp", "layer", 5)
    assert (w.optim.lr_g, w.optim.lr_d, w.optim.beta1, w.optim.beta2) == (1e-4, 1e-4, 0.0, 0.9)
    d = preset_config("dcgan-mnist")
    assert (d.optim.lr_d, d.optim.beta1, d.loss.loss, d.model.z_dist, d.model.d_activation) == \
        (2e-4, 0.5, "nonsaturating", "normal", "leaky_relu")
    assert d.data.scale_inputs and d.tricks.separate_batches
    assert preset_config("toy-grid25").data.dataset == "grid25"


def test_tricks_are_off_by_default_and_documented():
    plain = TrainConfig()
    t = plain.tricks
    assert (t.label_smoothing, t.random_labels, t.label_flip, t.instance_noise, t.replay_size, t.swap_prob, t.ema,
            t.pack, t.separate_batches, t.slerp_grid) == (0.0, False, 0.0, 0.0, 0, 0.0, 0.0, 1, False, False)
    assert (plain.loss.loss, plain.loss.penalty, plain.model.minibatch, plain.model.conditional) == \
        ("minimax", "none", "none", "none")
    table = tricks()
    assert len(table) >= 25
    for key, (doc, source) in table.items():
        assert doc and source, key
    assert "ganhacks #6" in describe_options(tricks_only=True)


def test_yaml_nested_flat_and_override_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "wgan-gp-mnist", "run": {"steps": 10}, "ema": 0.99,
                                    "tricks": {"pack": 2}}))
    cfg = load_config(str(path), overrides={"run.steps": 20}, sets=["steps=30", "lr_d=3e-4"])
    assert cfg.preset == "wgan-gp-mnist" and cfg.optim.n_critic == 5
    assert cfg.tricks.ema == 0.99 and cfg.tricks.pack == 2
    assert cfg.run.steps == 30 and cfg.optim.lr_d == 3e-4
    # without a preset the data set picks one; "none" is the plain defaults
    assert load_config(sets=["dataset=grid25"]).preset == "toy-grid25"
    assert load_config(preset="none").loss.loss == "minimax"


def test_validation_reports_every_problem_one_line_each(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(preset="dcgan-mnist", sets=["loss=hinge", "label_flip=0.1", "pack=3", "conditional=acgan",
                                                "image_size=48", "beta1=2"])
    lines = exc.value.errors
    assert len(lines) == len(set(lines)) >= 5
    assert all("\n" not in line for line in lines)
    text = "\n".join(lines)
    for needle in ("optim.beta1: must be <=", "label tricks need a loss with targets",
                   "packing mixes the labels", "power of two", "multiple of the pack size 3"):
        assert needle in text
    path = tmp_path / "bad.yaml"
    path.write_text("run: {steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"run.steps: expected an integer, got 'many'"):
        load_config(sets=["steps=many"])
    assert load_config(sets=["upsample=pixelshuffle"]).model.upsample == "pixelshuffle"


def test_on_off_options_take_yaml_booleans(tmp_path):
    """YAML reads an unquoted on / off as true / false: the on / off options take them as meant, from
    --set and from a file; other string options still refuse a boolean."""
    for mode in ("on", "off"):
        cfg = load_config(sets=[f"channels_last={mode}", f"cudnn_benchmark={mode}"])
        assert (cfg.run.channels_last, cfg.run.cudnn_benchmark) == (mode, mode)
        path = tmp_path / f"{mode}.yaml"
        path.write_text(f"run:\n  channels_last: {mode}\n")
        assert load_config(str(path)).run.channels_last == mode
    with pytest.raises(ConfigError, match="model.g_activation: expected a string"):
        load_config(sets=["g_activation=on"])
