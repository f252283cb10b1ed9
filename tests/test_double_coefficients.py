"""norm_act_double_coefficients (the double backward's coefficient tables in one launch): fast vs ref.

The whole double backward is checked against the reference ops in each op's
test file; this pins the small kernel itself on every input kind it takes."""
import pytest
import torch

from fastgan import _backend
from fastgan.reference.norm_act_double import double_coefficients as ref_double_coefficients

from _tolerances import assert_close
from conftest import all_backend_params

NAMES = ("a2", "a3", "b1", "b2", "b3", "b4", "grad_w")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("rows,c,groups", [(None, 6, 6), (None, 12, 3), (3, 8, 1), (2, 6, 3), (2, 5, 5),
                                           (1, 600, 2)])  # (C,) vectors: batch norm; (N, C): per-sample
@pytest.mark.parametrize("weight,grads", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("batch_stats", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_ref(impl, device, rows, c, groups, weight, grads, batch_stats, dtype):
    shape = (c,) if rows is None else (rows, c)
    sums = [torch.randn(shape, dtype=dtype, device=device) * 3 for _ in range(5)]
    invstd = torch.rand(shape, dtype=dtype, device=device) + 0.2
    if rows is not None:  # invstd is constant within a group of a sample
        invstd = invstd.reshape(rows, groups, -1)[..., :1].expand(rows, groups, c // groups).reshape(shape).contiguous()
    w = torch.randn(c, dtype=dtype, device=device) if weight else None
    alpha = torch.randn(c, dtype=dtype, device=device) if grads else None
    beta = torch.randn(c, dtype=dtype, device=device) if grads else None
    m = 37
    k = _backend.kernels(impl, "batch_norm_act")
    got = k.norm_act_double_coefficients(*sums, w, invstd, alpha, beta, groups, m, batch_stats)
    want = ref_double_coefficients(*sums, w, invstd, alpha, beta, groups, m, batch_stats)
    assert len(got) == 7
    for name, g, e in zip(NAMES, got, want):
        assert g.shape == invstd.shape and g.dtype == dtype, name
        assert_close(g, e, dtype, name=name)
