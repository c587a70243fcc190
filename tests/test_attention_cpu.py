"""CPU sparse attention op against the masked float64 PyTorch reference."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from fastrader.attention import (
    AttentionArgumentError,
    AttentionTypeError,
    available,
    sparse_attention,
    sparse_attention_mask,
    sparse_attention_with_lse,
)
from fastrader.attention.reference import sparse_attention_reference
from fastrader.errors import FastraderError

pytestmark = pytest.mark.skipif(not available(), reason="fastrader._C not built (FASTRADER_BUILD=torch setup.py)")

TOL = 1e-5  # max |ours - ref| / max |ref| per tensor, float32 vs float64 reference


def _rel_err(ours, ref):
    # Normalised by the tensor's scale: elementwise relative error is
    # meaningless where the exact value is 0 (e.g. dq with window=1).
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


def _inputs(shape, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3)]


def _compare(shape, window, dilation, sinks, seed, scale=None):
    """Forward, lse and all three gradients of the float32 op vs the float64 reference."""
    q, k, v = _inputs(shape, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    glse = torch.randn(shape[:-1], generator=gen, dtype=torch.float64)

    ours = [t.float().requires_grad_() for t in (q, k, v)]
    out, lse = sparse_attention_with_lse(*ours, window=window, dilation=dilation, sinks=sinks, scale=scale)
    torch.autograd.backward([out, lse], [grad.float(), glse.float()])

    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    rout, rlse = sparse_attention_reference(
        *ref, window=window, dilation=dilation, sinks=sinks, scale=scale, return_lse=True
    )
    torch.autograd.backward([rout, rlse], [grad, glse])

    errs = {
        "out": _rel_err(out, rout),
        "lse": _rel_err(lse, rlse),
        "dq": _rel_err(ours[0].grad, ref[0].grad),
        "dk": _rel_err(ours[1].grad, ref[1].grad),
        "dv": _rel_err(ours[2].grad, ref[2].grad),
    }
    bad = {name: e for name, e in errs.items() if not e <= TOL}
    assert not bad, f"shape={shape} window={window} dilation={dilation} sinks={sinks}: {bad}"


# seq lengths off every block size (64 queries, 128 keys), windows from 1 to
# > seq, sinks over more than one key chunk, head dims 8..128 including ones
# that are not a multiple of 8.
SWEEP = [
    ((1, 2, 37, 8), 1, 1, 0),
    ((1, 2, 37, 8), 5, 3, 2),
    ((2, 1, 130, 16), 64, 1, 4),
    ((2, 1, 130, 16), 300, 1, 0),
    ((1, 2, 200, 32), 17, 2, 70),
    ((1, 1, 300, 16), 9, 3, 150),  # sinks spanning two 128-key chunks
    ((1, 1, 200, 32), 256, 5, 1),
    ((1, 1, 97, 64), 40, 1, 3),
    ((1, 1, 129, 128), 33, 2, 5),
    ((1, 2, 150, 12), 20, 7, 9),
    ((1, 1, 1, 8), 256, 1, 4),
    ((1, 1, 70, 8), 3, 100, 2),  # dilation > seq: every query sees itself (+ sinks)
]


@pytest.mark.parametrize("shape,window,dilation,sinks", SWEEP)
def test_parity_with_reference(shape, window, dilation, sinks):
    _compare(shape, window, dilation, sinks, seed=hash((shape, window, dilation, sinks)) % 1000)


def test_parity_random_sweep():
    """Seeded random configurations beyond the hand-picked ones."""
    gen = torch.Generator().manual_seed(7)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    for case in range(12):
        shape = (1, pick([1, 3]), pick([5, 63, 64, 65, 190, 260]), pick([8, 13, 16, 24, 32, 40]))
        _compare(shape, pick([1, 2, 7, 64, 65, 129, 1000]), pick([1, 2, 4]), pick([0, 1, 3, 66, 130]), seed=100 + case)


def test_custom_scale():
    _compare((1, 2, 90, 16), 20, 2, 3, seed=11, scale=0.37)


def test_full_window_is_dense_causal_sdpa():
    """window >= seq must equal plain causal attention (independent: SDPA)."""
    q, k, v = _inputs((2, 3, 77, 32), seed=3)
    ours = sparse_attention(q.float(), k.float(), v.float(), window=77)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert _rel_err(ours, ref) <= TOL


def test_mask_semantics_by_enumeration():
    """The mask (used by the reference) against the rule written out per pair."""
    n, window, dilation, sinks = 23, 3, 2, 4
    mask = sparse_attention_mask(n, window, dilation, sinks)
    for i, j in itertools.product(range(n), range(n)):
        rule = j <= i and (((i - j) < window * dilation and (i - j) % dilation == 0) or j < sinks)
        assert bool(mask[i, j]) == rule, (i, j)


def test_op_attends_only_the_masked_keys():
    """Perturbing a key outside the mask leaves the output row unchanged, inside changes it."""
    q, k, v = _inputs((1, 1, 40, 8), seed=5, dtype=torch.float32)
    base = sparse_attention(q, k, v, window=4, dilation=3, sinks=2)
    mask = sparse_attention_mask(40, 4, 3, 2)
    for j in (0, 1, 5, 26, 30, 38):
        v2 = v.clone()
        v2[..., j, :] += 10.0
        changed = (sparse_attention(q, k, v2, window=4, dilation=3, sinks=2) - base).abs().amax(-1)[0, 0] > 1e-4
        assert torch.equal(changed, mask[:, j]), j


@pytest.mark.parametrize(
    "n,d,window,dilation,sinks", [(13, 8, 4, 1, 0), (17, 8, 3, 2, 2), (20, 12, 50, 1, 3), (33, 8, 2, 3, 1)]
)
def test_gradcheck_float64(n, d, window, dilation, sinks):
    q, k, v = [t.requires_grad_() for t in _inputs((1, 2, n, d), seed=n)]

    def fn(a, b, c):  # out and lse, so the lse gradient path is checked too
        return sparse_attention_with_lse(a, b, c, window=window, dilation=dilation, sinks=sinks)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_opcheck_forward_and_backward():
    q, k, v = [t.float() for t in _inputs((1, 2, 70, 16), seed=9)]
    fwd_args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), 5, 2, 3, 0.25)
    torch.library.opcheck(torch.ops.fastrader.sparse_attn_fwd.default, fwd_args)
    out, lse = torch.ops.fastrader.sparse_attn_fwd(q.detach(), k.detach(), v.detach(), 5, 2, 3, 0.25)
    gen = torch.Generator().manual_seed(2)
    bwd_args = (torch.randn(out.shape, generator=gen), q.detach(), k.detach(), v.detach(), out, lse, 5, 2, 3, 0.25)
    torch.library.opcheck(torch.ops.fastrader.sparse_attn_bwd.default, bwd_args)
    torch.library.opcheck(
        torch.ops.fastrader.sparse_attn_bwd.default, bwd_args + (torch.randn(lse.shape, generator=gen),)
    )


def test_torch_compile_fullgraph():
    q, k, v = [t.float().requires_grad_() for t in _inputs((1, 2, 50, 8), seed=4)]
    fn = torch.compile(lambda a, b, c: sparse_attention(a, b, c, window=6, sinks=1), backend="aot_eager", fullgraph=True)
    out = fn(q, k, v)
    out.sum().backward()
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    rout = sparse_attention_reference(*ref, window=6, sinks=1)
    rout.sum().backward()
    assert _rel_err(out, rout) <= TOL
    assert _rel_err(q.grad, ref[0].grad) <= TOL


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_and_segmented_backward(threads):
    """One long head: with 2 threads the backward splits the sequence into
    segments whose halos are summed afterwards; with 1 it does not. (Shapes are
    above the kernels' serial-work threshold, ~2M multiply-adds.)"""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _compare((1, 1, 2000, 32), 64, 1, 2, seed=21)
        _compare((1, 1, 1200, 16), 100, 2, 0, seed=22)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    q, k, v = [t.to(dtype) for t in _inputs((1, 2, 80, 32), seed=12)]
    qs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = sparse_attention(*qs, window=16, dilation=2, sinks=1)
    assert out.dtype == dtype
    out.float().square().sum().backward()
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    rout = sparse_attention_reference(*ref, window=16, dilation=2, sinks=1)
    rout.square().sum().backward()
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # output rounding to the input dtype
    assert _rel_err(out, rout) <= tol
    for ours, theirs in zip(qs, ref):
        assert ours.grad.dtype == dtype
        assert _rel_err(ours.grad, theirs.grad) <= 4 * tol


def test_non_contiguous_inputs():
    """(B, N, H, D) storage viewed as (B, H, N, D), as a model's qkv split gives."""
    q, k, v = _inputs((2, 50, 3, 16), seed=13, dtype=torch.float32)
    ours = sparse_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window=9, dilation=2, sinks=1)
    ref = sparse_attention_reference(
        *(t.transpose(1, 2).double() for t in (q, k, v)), window=9, dilation=2, sinks=1
    )
    assert _rel_err(ours, ref) <= TOL


def test_empty_batch():
    q = torch.randn(0, 2, 10, 8)
    assert sparse_attention(q, q, q, window=3).shape == (0, 2, 10, 8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": 0}, "window"),
        ({"dilation": 0}, "dilation"),
        ({"sinks": -1}, "sinks"),
        ({"scale": float("nan")}, "scale"),
        ({"window": 2**70}, "window"),
        ({"window": 2**40, "dilation": 2**40}, "window \\* dilation"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs, match):
    q, k, v = _inputs((1, 1, 8, 8), seed=1, dtype=torch.float32)
    args = {"window": 4, "dilation": 1, "sinks": 0, "scale": None} | kwargs
    with pytest.raises(AttentionArgumentError, match=match) as info:
        sparse_attention(q, k, v, **args)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FastraderError)


def test_bad_shapes_and_devices_raise_value_error():
    q = torch.randn(1, 1, 8, 8)
    for bad_q, bad_k, what in [
        (torch.randn(8, 8), torch.randn(8, 8), "4-D"),
        (q, torch.randn(1, 1, 9, 8), "same shape"),
        (torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4), "head_dim"),
        (torch.randn(1, 1, 8, 130), torch.randn(1, 1, 8, 130), "head_dim"),
        (q, torch.randn(1, 1, 8, 8, device="meta"), "device"),
        (torch.randn(1, 1, 8, 8, device="meta"),) * 2 + ("device",),
    ]:
        with pytest.raises(AttentionArgumentError, match=what):
            sparse_attention(bad_q, bad_k, bad_k, window=4)


def test_bad_types_raise_type_error():
    q = torch.randn(1, 1, 8, 8)
    cases = [
        ((q.int(), q.int(), q.int()), {}, "dtype"),
        ((q, q.double(), q), {}, "dtype"),
        ((q.numpy(), q, q), {}, "q must be a torch.Tensor"),
        ((q, q, q), {"window": 2.5}, "window"),
        ((q, q, q), {"sinks": True}, "sinks"),
        ((q, q, q), {"scale": "big"}, "scale"),
    ]
    for args, kwargs, what in cases:
        with pytest.raises(AttentionTypeError, match=what) as info:
            sparse_attention(*args, **kwargs)
        assert isinstance(info.value, TypeError)


def test_cpp_checks_guard_direct_op_calls():
    """Calling torch.ops directly skips the Python checks; C++ must still refuse."""
    q = torch.randn(1, 1, 8, 8)
    with pytest.raises(RuntimeError, match="window"):
        torch.ops.fastrader.sparse_attn_fwd(q, q, q, 0, 1, 0, 1.0)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.fastrader.sparse_attn_fwd(q, q[..., :4, :], q, 2, 1, 0, 1.0)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = _inputs((1, 1, 30, 16), seed=14, dtype=torch.float32)
    a = sparse_attention(q, k, v, window=7)
    b = sparse_attention(q, k, v, window=7, scale=1 / math.sqrt(16))
    assert torch.equal(a, b)
    assert not torch.allclose(a, sparse_attention(q, k, v, window=7, scale=1.0))


@pytest.mark.parametrize("window,dilation,sinks,j", [(8, 1, 0, 60), (8, 2, 2, 61), (30, 1, 3, 99)])
def test_non_finite_key_reaches_only_the_queries_that_attend_it(window, dilation, sinks, j):
    """A NaN key/value at position j (a bad future candle, say) must leave every
    query that does not attend j untouched -- no 0 * NaN through padded tiles --
    and likewise the gradients that do not depend on those queries."""
    shape = (1, 2, 100, 16)
    q, k, v = _inputs(shape, seed=j, dtype=torch.float32)
    gen = torch.Generator().manual_seed(j + 1)
    grad = torch.randn(shape, generator=gen)
    mask = sparse_attention_mask(100, window, dilation, sinks)
    rows_bad = mask[:, j]  # queries that attend j
    keys_bad = mask[rows_bad].any(0)  # keys those queries attend

    def run(k_in, v_in):
        ts = [t.clone().requires_grad_() for t in (q, k_in, v_in)]
        out = sparse_attention(*ts, window=window, dilation=dilation, sinks=sinks)
        out.backward(grad)
        return out.detach(), *(t.grad for t in ts)

    k_bad, v_bad = k.clone(), v.clone()
    k_bad[..., j, 3] = float("nan")
    v_bad[..., j, 5] = float("inf")
    clean, dirty = run(k, v), run(k_bad, v_bad)
    good_rows, good_keys = ~rows_bad, ~keys_bad
    for name, c, d, sel in zip(("out", "dq", "dk", "dv"), clean, dirty, (good_rows, good_rows, good_keys, good_keys)):
        assert torch.isfinite(d[..., sel, :]).all(), name
        torch.testing.assert_close(d[..., sel, :], c[..., sel, :], rtol=0, atol=1e-6, msg=name)
    assert not torch.isfinite(dirty[0][..., j, :]).all()  # and the query at j does see it
