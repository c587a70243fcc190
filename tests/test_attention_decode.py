"""The single-query decode op equals the full forward's row, ring buffer wrapped or not."""

from __future__ import annotations

import pytest
import torch

from fastrader.attention import available
from fastrader.attention.ops import (
    AttentionArgumentError,
    AttentionTypeError,
    _decode_torch,
    decode_cache_slots,
    sparse_attention_decode,
)
from fastrader.attention.reference import sparse_attention_reference

pytestmark = pytest.mark.skipif(not available(), reason="the compiled extension fastrader._C is not built")


def fill_cache(k, v, upto, window, dilation, sinks):
    """Write keys 0..upto[b] of each sequence in order, the way a stream does, into fresh caches."""
    B, H, N, D = k.shape
    S = decode_cache_slots(window, dilation, sinks)
    span = window * dilation
    # Poison: a slot the op must not read would turn the output into garbage.
    kc = torch.full((B, H, S, D), 1e4, dtype=k.dtype)
    vc = torch.full((B, H, S, D), float("nan"), dtype=k.dtype)
    for b in range(B):
        for j in range(int(upto[b]) + 1):
            slot = j if j < sinks else sinks + j % span
            kc[b, :, slot] = k[b, :, j]
            vc[b, :, slot] = v[b, :, j]
    return kc, vc


CASES = [(7, 1, 0), (5, 3, 2), (16, 1, 1), (1, 1, 0), (4, 2, 5), (3, 4, 1)]


@pytest.mark.parametrize("window,dilation,sinks", CASES)
@pytest.mark.parametrize("D,dtype", [(8, torch.float32), (16, torch.float32), (12, torch.float32), (8, torch.float64)])
def test_decode_equals_full_forward_row(window, dilation, sinks, D, dtype):
    g = torch.Generator().manual_seed(window * 100 + dilation * 10 + sinks + D)
    B, H, N = 2, 3, 3 * (sinks + window * dilation) + 5  # the ring wraps about three times
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    ref = sparse_attention_reference(q, k, v, window, dilation, sinks)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    positions = sorted({0, 1, sinks, sinks + 1, window * dilation, N // 2, N - 2, N - 1} - {N})
    for p in positions:
        pos = torch.tensor([p, max(0, p - 3)], dtype=torch.int64)  # two sequences at different positions
        kc, vc = fill_cache(k, v, pos, window, dilation, sinks)
        qq = torch.stack([q[b, :, int(pos[b])] for b in range(B)])
        out = sparse_attention_decode(qq, kc, vc, pos, window, dilation, sinks)
        want = torch.stack([ref[b, :, int(pos[b])] for b in range(B)])
        assert out.dtype == dtype and out.shape == (B, H, D)
        torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol, msg=f"pos {pos.tolist()}")
        # the plain-torch fallback (used where no kernel is registered) obeys the same rule
        fb = _decode_torch(qq, kc, vc, pos, window, dilation, sinks, D**-0.5)
        torch.testing.assert_close(fb.double(), want, atol=tol, rtol=tol)


def test_decode_half_precision_and_scale():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    ref = sparse_attention_reference(q.double(), k.double(), v.double(), 8, 2, 1, scale=0.3)
    pos = torch.tensor([39])
    kc, vc = fill_cache(k, v, pos, 8, 2, 1)
    out = sparse_attention_decode(q[:, :, 39].bfloat16(), kc.bfloat16(), vc.bfloat16(), pos, 8, 2, 1, scale=0.3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref[:, :, 39], atol=3e-2, rtol=3e-2)


def test_decode_opcheck():
    g = torch.Generator().manual_seed(1)
    B, H, D, window, dilation, sinks = 2, 2, 8, 6, 2, 1
    S = decode_cache_slots(window, dilation, sinks)
    q = torch.randn(B, H, D, generator=g)
    kc, vc = torch.randn(B, H, S, D, generator=g), torch.randn(B, H, S, D, generator=g)
    pos = torch.tensor([3, 40])
    torch.library.opcheck(
        torch.ops.fastrader.sparse_attn_decode,
        (q, kc, vc, pos, window, dilation, sinks, 0.35),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_decode_rejects_bad_input():
    q = torch.randn(1, 2, 8)
    kc = torch.randn(1, 2, 1 + 4 * 2, 8)
    pos = torch.tensor([3])
    with pytest.raises(AttentionArgumentError, match="k_cache must have shape"):
        sparse_attention_decode(q, kc, kc, pos, 4, 1, 1)  # cache sized for dilation 2
    with pytest.raises(AttentionArgumentError, match="pos must be an int64"):
        sparse_attention_decode(q, kc, kc, pos.int(), 4, 2, 1)
    with pytest.raises(AttentionArgumentError, match="pos must be >= 0"):
        sparse_attention_decode(q, kc, kc, torch.tensor([-1]), 4, 2, 1)
    with pytest.raises(AttentionTypeError, match="share one dtype"):
        sparse_attention_decode(q, kc.double(), kc, pos, 4, 2, 1)
    with pytest.raises(AttentionArgumentError, match="q must be 3-D"):
        sparse_attention_decode(q[None], kc, kc, pos, 4, 2, 1)
    with pytest.raises(AttentionTypeError, match="window must be an int"):
        sparse_attention_decode(q, kc, kc, pos, 4.0, 2, 1)
