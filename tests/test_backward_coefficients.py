"""norm_act_backward_coefficients (the first backward's coefficient tables and parameter sums in one
launch): fast vs ref.

The whole backward is checked against the reference ops in each op's test
file; this pins the small kernel itself on every input kind it takes."""
import pytest
import torch

from fastgan import _backend
from fastgan.reference.norm_act_backward import backward_coefficients as ref_backward_coefficients

from _tolerances import assert_close
from conftest import all_backend_params

NAMES = ("k2", "k3", "sum_g", "sum_gx")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("rows,c,groups", [
    (None, 6, 6), (None, 300, 300), (None, 12, 3),  # (C,) vectors: batch norm, then pixel-shuffled batch norm
    (3, 8, 1), (2, 6, 3), (2, 5, 5), (1, 600, 2), (4, 300, 300), (5, 1, 1)])  # (N, C) tables: per-sample norms
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_ref(impl, device, rows, c, groups, dtype):
    shape = (c,) if rows is None else (rows, c)
    r_g, r_gx = (torch.randn(shape, dtype=dtype, device=device) * 3 for _ in range(2))
    scale = torch.randn(shape, dtype=dtype, device=device)
    count = 37
    got = _backend.kernels(impl, "batch_norm_act").norm_act_backward_coefficients(r_g, r_gx, scale, groups, count)
    want = ref_backward_coefficients(r_g, r_gx, scale, groups, count)
    assert len(got) == 4
    for name, g, e, shape in zip(NAMES, got, want, (scale.shape, scale.shape, (c,), (c,))):
        assert g.shape == e.shape == shape and g.dtype == dtype, name
        assert_close(g, e, dtype, name=name)


def test_ref_matches_definition():
    """The reference itself against the formulas, written out for one (N, C) table with two groups."""
    r_g, r_gx, scale = (torch.randn(3, 4, dtype=torch.float64) for _ in range(3))
    k2, k3, sum_g, sum_gx = ref_backward_coefficients(r_g, r_gx, scale, 2, 10)
    for t, (r, k) in enumerate(((r_g, k2), (r_gx, k3))):
        prod = scale * r
        want = -torch.stack([prod[:, :2].sum(1)] * 2 + [prod[:, 2:].sum(1)] * 2, dim=1) / 10
        torch.testing.assert_close(k, want, msg=f"k{t + 2}")
    torch.testing.assert_close(sum_g, r_g.sum(0))
    torch.testing.assert_close(sum_gx, r_gx.sum(0))


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_no_rows(impl, device):
    """A (0, C) table: empty coefficient tables, column sums of zero rows are 0."""
    r = torch.empty(0, 5, device=device)
    k2, k3, sum_g, sum_gx = _backend.kernels(impl, "batch_norm_act").norm_act_backward_coefficients(r, r, r, 5, 3)
    assert k2.shape == k3.shape == (0, 5)
    assert torch.equal(sum_g, torch.zeros(5, device=device)) and torch.equal(sum_gx, torch.zeros(5, device=device))


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("per_sample,groups", [(False, 6), (True, 1), (True, 3), (True, 6)])
def test_reduce_coefficients_is_reduce_then_coefficients(impl, device, per_sample, groups):
    """norm_act_backward_reduce_coefficients: the reduction and its coefficients in one call, the same
    bits as the two ops called one after the other."""
    k = _backend.kernels(impl, "batch_norm_act")
    x, gy = torch.randn(4, 6, 3, 5, device=device), torch.randn(4, 6, 3, 5, device=device)
    shape = (4, 6) if per_sample else (6,)
    scale, shift, mean = (torch.randn(shape, device=device) for _ in range(3))
    invstd = torch.rand(shape, device=device) + 0.5
    count = 37
    got = k.norm_act_backward_reduce_coefficients(gy, x, scale, shift, mean, invstd, 2, 0.2, groups, count)
    r_g, r_gx = k.norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, 2, 0.2)
    want = (r_g, r_gx, *k.norm_act_backward_coefficients(r_g, r_gx, scale, groups, count))
    assert len(got) == 6
    for name, g, e in zip(("r_g", "r_gx") + NAMES, got, want):
        assert g.shape == e.shape and g.dtype == e.dtype and torch.equal(g, e), name
    for name, g, e in zip(NAMES, got[2:], ref_backward_coefficients(r_g, r_gx, scale, groups, count)):
        assert_close(g, e, torch.float32, name=name)
