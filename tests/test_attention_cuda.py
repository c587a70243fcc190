"""CUDA kernels of fastrader::sparse_attn_fwd / sparse_attn_bwd.

Skipped as a whole on machines without a CUDA device (CI has none). On a GPU:

* parity of out, lse, dq, dk, dv against an independent float64 PyTorch
  reference with a materialised mask, over a sweep of sequence lengths that
  are multiples of nothing, windows 1 .. > seq, dilation 1/3, sinks 0/2,
  head dims 8..128, float32/bfloat16/float16 (and float64 on its own);
  tolerances come from the reference's own error in the same low precision:
  ours must be within 2x of it for float16/bfloat16 (3x for float32), plus
  half a unit of the dtype's rounding times the output's magnitude;
* float16/bfloat16 run the tensor-core kernels (fwd_mma.cu, bwd_mma.cu):
  a seeded random-shape fuzz (odd N, W > N, W = 1, dilation > N, sinks
  spanning key tiles, head dims 8..128 including 12 and 24);
* the decode op equals the full forward's row at the query position, before
  and after the ring buffer wraps, and replays inside a CUDA graph;
* the op on the CPU and on CUDA agree on the same inputs (when the CPU
  kernel is registered);
* torch.library.opcheck on CUDA tensors, and the Python wrapper
  ``fastrader.attention.sparse_attention`` (autograd included) on CUDA.

Set FASTRADER_CUDA_TEST_STATS=path to get one JSON line per parity check
(observed errors and the allowed bound) for a summary table.
"""

from __future__ import annotations

import json
import math
import os
import zlib

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the CUDA kernels of fastrader::sparse_attn_* can only run on an NVIDIA GPU",
)

LOWP = (torch.float32, torch.bfloat16, torch.float16)
STATS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def cuda_op():
    """Loads the extension and insists that it registered its CUDA kernels."""
    from fastrader import _C  # noqa: F401  (registers the ops)

    for name in ("fastrader::sparse_attn_fwd", "fastrader::sparse_attn_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), (
            f"{name} has no CUDA kernel: the extension was built without CUDA (is nvcc on the PATH?)"
        )
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be float32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    path = os.environ.get("FASTRADER_CUDA_TEST_STATS")
    if path:
        with open(path, "a") as fh:
            for row in STATS:
                fh.write(json.dumps(row) + "\n")


def cpu_has_kernel():
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastrader::sparse_attn_fwd", "CPU")


# ------------------------------------------------------------ the reference


def allowed(n, window, dilation, sinks, device):
    """mask[i, j]: query i attends key j (straight from the definition)."""
    i = torch.arange(n, device=device).unsqueeze(1)
    j = torch.arange(n, device=device).unsqueeze(0)
    d = i - j
    return (d >= 0) & (((d < window * dilation) & (d % dilation == 0)) | (j < sinks))


def reference(q, k, v, mask, scale):
    """Dense masked attention in q's dtype: (out, lse). Differentiable."""
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.softmax(s, dim=-1) @ v
    return out, lse


def reference_grads(q, k, v, mask, scale, g_out, g_lse, dtype):
    """out, lse, dq, dk, dv of the reference computed entirely in ``dtype``."""
    qq, kk, vv = (t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))
    out, lse = reference(qq, kk, vv, mask, scale)
    loss = (out * g_out.to(dtype)).sum()
    if g_lse is not None:
        loss = loss + (lse * g_lse.to(dtype)).sum()
    dq, dk, dv = torch.autograd.grad(loss, (qq, kk, vv))
    return [t.detach() for t in (out, lse, dq, dk, dv)]


def random_inputs(b, h, n, d, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float64) * scale).to(dtype)

    q, k, v = rnd(b, h, n, d, scale=1.5), rnd(b, h, n, d), rnd(b, h, n, d)
    g_out = rnd(b, h, n, d)
    g_lse = rnd(b, h, n, scale=0.5).float() if dtype != torch.float64 else rnd(b, h, n, scale=0.5)
    return q, k, v, g_out, g_lse


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check_parity(tag, ours, ref64, reflow, dtype):
    """ours/ref64/reflow: dicts name -> tensor. Asserts each error bound."""
    if dtype == torch.float64:
        floor_c, ratio = 1e-10, 0.0
    elif dtype == torch.float32:
        floor_c, ratio = 8 * torch.finfo(torch.float32).eps, 3.0
    else:  # the bar: at most 2x the error of PyTorch's own bf16/fp16 math
        floor_c, ratio = 0.5 * torch.finfo(dtype).eps, 2.0
    grad_scale = max(ref64[n].abs().max().item() for n in ("dq", "dk", "dv"))
    failures = []
    for name in ("out", "lse", "dq", "dk", "dv"):
        if name not in ours:
            continue
        a, r = ours[name], ref64[name]
        assert a.shape == r.shape, (tag, name, a.shape, r.shape)
        assert torch.isfinite(a).all(), f"{tag}: non-finite values in {name}"
        mag = grad_scale if name.startswith("d") else r.abs().max().item()
        if name == "lse":
            mag = max(mag, 1.0)
        e = max_err(a, r)
        e_low = max_err(reflow[name], r) if reflow is not None else 0.0
        bound = ratio * e_low + floor_c * mag
        STATS.append(
            {"tag": tag, "dtype": str(dtype).replace("torch.", ""), "name": name, "err": e, "err_ref_lowp": e_low,
             "bound": bound, "mag": mag}
        )
        if not e <= bound:
            failures.append(f"{name}: err {e:.3e} > bound {bound:.3e} (ref-{dtype} err {e_low:.3e}, |ref| {mag:.3e})")
    assert not failures, f"{tag}: " + "; ".join(failures)


def run_case(b, h, n, d, window, dilation, sinks, dtype, seed, use_glse=True, scale=None):
    q, k, v, g_out, g_lse = random_inputs(b, h, n, d, dtype, seed)
    if not use_glse:
        g_lse = None
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    mask = allowed(n, window, dilation, sinks, "cuda")
    ops = torch.ops.fastrader
    out, lse = ops.sparse_attn_fwd(q, k, v, window, dilation, sinks, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert lse.shape == q.shape[:-1]
    dq, dk, dv = ops.sparse_attn_bwd(g_out, q, k, v, out, lse, window, dilation, sinks, scale, g_lse)
    for t in (dq, dk, dv):
        assert t.dtype == dtype and t.shape == q.shape

    r64 = reference_grads(q, k, v, mask, scale, g_out, g_lse, torch.float64)
    rlow = reference_grads(q, k, v, mask, scale, g_out, g_lse, dtype) if dtype != torch.float64 else None
    names = ("out", "lse", "dq", "dk", "dv")
    tag = f"B={b},H={h},N={n},D={d},W={window},dil={dilation},S={sinks},{str(dtype)[6:]}"
    check_parity(
        tag,
        dict(zip(names, (out, lse, dq, dk, dv))),
        dict(zip(names, r64)),
        dict(zip(names, rlow)) if rlow is not None else None,
        dtype,
    )
    return (q, k, v, g_out, g_lse, scale), (out, lse, dq, dk, dv)


# ------------------------------------------------------------------- tests


def test_reference_mask_matches_definition():
    n, w, dil, s = 23, 4, 3, 2
    m = allowed(n, w, dil, s, "cuda").cpu()
    for i in range(n):
        for j in range(n):
            want = j <= i and ((i - j < w * dil and (i - j) % dil == 0) or j < s)
            assert bool(m[i, j]) == want, (i, j)


@pytest.mark.parametrize("dtype", LOWP, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("d", [8, 32, 64, 128])
@pytest.mark.parametrize("window", [1, 7, 64, 1000])
@pytest.mark.parametrize("dilation", [1, 3])
@pytest.mark.parametrize("sinks", [0, 2])
def test_parity_sweep(dtype, d, window, dilation, sinks):
    seed = zlib.crc32(repr((str(dtype), d, window, dilation, sinks)).encode())
    run_case(2, 3, 131, d, window, dilation, sinks, dtype, seed)


@pytest.mark.parametrize(
    "n,d,window,dilation,sinks",
    [
        (1, 32, 4, 1, 0),
        (1, 32, 1, 3, 2),
        (2, 16, 1, 1, 1),
        (5, 8, 2, 7, 0),  # dilation > N
        (37, 16, 3, 2, 40),  # sinks > N: dense causal
        (37, 24, 5, 1, 37),  # head dim that is no power of two
        (97, 100, 9, 4, 5),
        (61, 256, 6, 2, 3),  # the op takes head dims up to 256
        (257, 64, 32, 1, 1),
        (1000, 64, 64, 3, 2),
        (2003, 32, 16, 1, 3),  # long rows for the sink-key kernel
    ],
)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=lambda t: str(t)[6:])
def test_parity_edges(n, d, window, dilation, sinks, dtype):
    run_case(1, 2, n, d, window, dilation, sinks, dtype, seed=n * 1009 + d)


@pytest.mark.parametrize("dtype", (torch.float64,), ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("window,dilation,sinks", [(1, 1, 0), (5, 3, 2), (200, 1, 2), (16, 2, 0)])
@pytest.mark.parametrize("d", [8, 64, 128])
def test_parity_float64(dtype, window, dilation, sinks, d):
    run_case(2, 2, 157, d, window, dilation, sinks, dtype, seed=window * 31 + d)


@pytest.mark.parametrize("dtype", LOWP, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("scale", [-0.3, 0.0, 2.5])
@pytest.mark.parametrize("d,window,sinks", [(8, 40, 0), (16, 70, 3), (24, 33, 0), (32, 129, 0), (64, 65, 2)])
def test_parity_any_scale(dtype, scale, d, window, sinks):
    """Scales other than 1/sqrt(D): negative (row maxima of the scaled scores are minima of the raw
    ones), zero (every score 0, masked keys still excluded) and large (sharp softmax)."""
    run_case(2, 2, 301, d, window, 1, sinks, dtype, seed=int(abs(scale) * 10) + d, scale=scale)


@pytest.mark.parametrize("dtype", LOWP, ids=lambda t: str(t)[6:])
def test_parity_without_grad_lse(dtype):
    run_case(1, 2, 143, 64, 17, 2, 2, dtype, seed=7, use_glse=False)


def test_deterministic_and_noncontiguous():
    q, k, v, g_out, g_lse = random_inputs(2, 3, 190, 32, torch.float32, seed=11)
    args = (9, 2, 2, 0.25)
    ops = torch.ops.fastrader
    out1, lse1 = ops.sparse_attn_fwd(q, k, v, *args)
    out2, lse2 = ops.sparse_attn_fwd(q, k, v, *args)
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)
    g1 = ops.sparse_attn_bwd(g_out, q, k, v, out1, lse1, *args, g_lse)
    g2 = ops.sparse_attn_bwd(g_out, q, k, v, out1, lse1, *args, g_lse)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    # (B, N, H, D) memory seen as (B, H, N, D): not contiguous
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qt.is_contiguous()
    out3, lse3 = ops.sparse_attn_fwd(qt, kt, vt, *args)
    assert torch.equal(out1, out3) and torch.equal(lse1, lse3)
    g3 = ops.sparse_attn_bwd(g_out, qt, kt, vt, out1, lse1, *args, g_lse)
    assert all(torch.equal(a, b) for a, b in zip(g1, g3))


_REJECT_SCRIPT = """
import torch, fastrader._C
q = torch.randn(1, 1, 8, 16, device="cuda")
ops = torch.ops.fastrader
for args, want in (((q, q, q, 0, 1, 0, 0.25), "window"), ((q, q[..., :8], q, 4, 1, 0, 0.25), "same shape"),
                   ((q, q.double(), q, 4, 1, 0, 0.25), "dtype")):
    try:
        ops.sparse_attn_fwd(*args)
    except RuntimeError as exc:
        assert want in str(exc), (want, str(exc))
        print("raised:", want)
    else:
        raise SystemExit("no error for " + want)
"""


def test_rejects_bad_input():
    # In a child process: a C++ error thrown from the CUDA op crashed the
    # interpreter (SIGSEGV) once on the GPU machine; that must fail this test,
    # not take the whole test session down with it.
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))))
    proc = subprocess.run([sys.executable, "-c", _REJECT_SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.stdout.count("raised:") == 3, proc.stdout


def test_empty_inputs():
    q = torch.randn(2, 0, 5, 16, device="cuda")
    out, lse = torch.ops.fastrader.sparse_attn_fwd(q, q, q, 4, 1, 0, 0.25)
    assert out.shape == q.shape and lse.shape == (2, 0, 5)
    q = torch.randn(1, 2, 0, 16, device="cuda")
    out, lse = torch.ops.fastrader.sparse_attn_fwd(q, q, q, 4, 1, 0, 0.25)
    assert out.shape == q.shape and lse.shape == (1, 2, 0)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16, torch.float16), ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("n,d,window,dilation,sinks", [(131, 32, 7, 3, 2), (300, 64, 64, 1, 0), (77, 128, 1000, 2, 2)])
def test_cpu_and_cuda_agree(dtype, n, d, window, dilation, sinks):
    if not cpu_has_kernel():
        pytest.fail("fastrader::sparse_attn_fwd has no CPU kernel registered")
    q, k, v, g_out, g_lse = random_inputs(2, 2, n, d, dtype, seed=n + d)
    args = (window, dilation, sinks, 1.0 / math.sqrt(d))
    ops = torch.ops.fastrader
    out, lse = ops.sparse_attn_fwd(q, k, v, *args)
    grads = ops.sparse_attn_bwd(g_out, q, k, v, out, lse, *args, g_lse)
    cpu = [t.cpu() for t in (q, k, v, g_out, g_lse, out, lse)]
    out_c, lse_c = ops.sparse_attn_fwd(*cpu[:3], *args)
    grads_c = ops.sparse_attn_bwd(cpu[3], *cpu[:3], cpu[5], cpu[6], *args, cpu[4])
    assert out_c.dtype == out.dtype and lse_c.dtype == lse.dtype
    # Both accumulate in float32 (float64) in different orders; low-precision
    # results may then round to neighbouring values.
    if dtype == torch.float64:
        tol = dict(rtol=1e-11, atol=1e-11)
    elif dtype == torch.float32:
        tol = dict(rtol=2e-5, atol=2e-5)
    else:
        tol = dict(rtol=torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)
    torch.testing.assert_close(out.cpu(), out_c, **tol)
    torch.testing.assert_close(lse.cpu(), lse_c, rtol=tol["rtol"], atol=max(tol["atol"], 2e-5 if dtype != torch.float64 else 0))
    for name, a, b in zip(("dq", "dk", "dv"), grads, grads_c):
        torch.testing.assert_close(a.cpu(), b, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda t: str(t)[6:])
def test_opcheck(dtype):
    import fastrader.attention  # noqa: F401  (fake kernels and autograd formula)

    q, k, v, g_out, g_lse = random_inputs(1, 2, 45, 16, dtype, seed=3)
    args = (6, 2, 2, 0.3)
    out, lse = torch.ops.fastrader.sparse_attn_fwd(q, k, v, *args)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    torch.library.opcheck(torch.ops.fastrader.sparse_attn_fwd.default, (qr, kr, vr, *args))
    torch.library.opcheck(torch.ops.fastrader.sparse_attn_fwd.default, (q, k, v, *args))
    torch.library.opcheck(torch.ops.fastrader.sparse_attn_bwd.default, (g_out, q, k, v, out, lse, *args, g_lse))
    torch.library.opcheck(torch.ops.fastrader.sparse_attn_bwd.default, (g_out, q, k, v, out, lse, *args, None))


@pytest.mark.parametrize("dtype", LOWP + (torch.float64,), ids=lambda t: str(t)[6:])
def test_wrapper_autograd(dtype):
    attention = pytest.importorskip("fastrader.attention", reason="the Python wrapper fastrader.attention is absent")
    b, h, n, d, window, dilation, sinks = 2, 2, 123, 32, 10, 2, 2
    q, k, v, g_out, g_lse = random_inputs(b, h, n, d, dtype, seed=5)
    mask = allowed(n, window, dilation, sinks, "cuda")
    scale = 1.0 / math.sqrt(d)

    qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = attention.sparse_attention(qq, kk, vv, window=window, dilation=dilation, sinks=sinks)
    dq, dk, dv = torch.autograd.grad((out * g_out).sum(), (qq, kk, vv))
    r64 = reference_grads(q, k, v, mask, scale, g_out, None, torch.float64)
    rlow = reference_grads(q, k, v, mask, scale, g_out, None, dtype) if dtype != torch.float64 else None
    names = ("out", "lse", "dq", "dk", "dv")
    ours = {"out": out.detach(), "dq": dq, "dk": dk, "dv": dv}
    check_parity(f"wrapper,{str(dtype)[6:]}", ours, dict(zip(names, r64)),
                 dict(zip(names, rlow)) if rlow is not None else None, dtype)

    # through the lse output as well (grad_lse reaches the backward kernel)
    qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
    out, lse = attention.sparse_attention_with_lse(qq, kk, vv, window=window, dilation=dilation, sinks=sinks)
    loss = (out * g_out).sum() + (lse * g_lse).sum()
    dq, dk, dv = torch.autograd.grad(loss, (qq, kk, vv))
    r64 = reference_grads(q, k, v, mask, scale, g_out, g_lse, torch.float64)
    rlow = reference_grads(q, k, v, mask, scale, g_out, g_lse, dtype) if dtype != torch.float64 else None
    ours = {"out": out.detach(), "lse": lse.detach(), "dq": dq, "dk": dk, "dv": dv}
    check_parity(f"wrapper+lse,{str(dtype)[6:]}", ours, dict(zip(names, r64)),
                 dict(zip(names, rlow)) if rlow is not None else None, dtype)


# ------------------------------------------------- tensor-core kernels: fuzz


def _fuzz_cases(count=36, seed=2024):
    import random

    rnd = random.Random(seed)
    cases = []
    for i in range(count):
        n = rnd.choice([1, 2, 3, 17, 63, 64, 65, 127, 129, 191, 257, 333])
        if n % 2 == 0 and rnd.random() < 0.7:
            n += 1  # mostly odd
        d = (8, 12, 16, 24, 32, 64, 128)[i % 7]
        window = rnd.choice([1, 2, 5, 31, 64, 65, 100, n, n + 7, 4 * n + 1])
        dilation = rnd.choice([1, 1, 2, 3, 5, n + 1, 2 * n + 3])
        sinks = rnd.choice([0, 0, 1, 3, 64, 65, 70, 130, n + 2])
        b, h = rnd.choice([(1, 1), (2, 1), (1, 3), (2, 2)])
        dtype = torch.bfloat16 if rnd.random() < 0.6 else torch.float16
        cases.append((b, h, max(n, 1), d, max(window, 1), dilation, sinks, dtype))
    return cases


@pytest.mark.parametrize("b,h,n,d,window,dilation,sinks,dtype", _fuzz_cases(),
                         ids=lambda x: str(x)[6:] if isinstance(x, torch.dtype) else str(x))
def test_mma_fuzz(b, h, n, d, window, dilation, sinks, dtype):
    run_case(b, h, n, d, window, dilation, sinks, dtype, seed=zlib.crc32(repr((b, h, n, d, window, dilation, sinks)).encode()))


def test_can_run_matches_dispatch():
    from fastrader.attention.ops import can_run

    major, _ = torch.cuda.get_device_capability()
    q = torch.randn(1, 1, 8, 64, device="cuda", dtype=torch.bfloat16)
    ok, why = can_run("cuda-mma", q)
    assert ok == (major >= 8 and os.environ.get("FASTRADER_CUDA_KERNEL") != "scalar"), why
    assert can_run("cuda-mma", q.float()) == (False, can_run("cuda-mma", q.float())[1])
    assert "float16/bfloat16" in can_run("cuda-mma", q.float())[1]
    assert can_run("cuda-scalar", q.float())[0]
    assert not can_run("cpu", q)[0]


@pytest.mark.parametrize("d,dilation,dtype", [(64, 1, torch.bfloat16), (128, 1, torch.float16), (32, 1, torch.bfloat16),
                                              (64, 2, torch.bfloat16), (64, 1, torch.float32)])
def test_can_run_wgmma_matches_the_kernels_own_check(d, dilation, dtype, monkeypatch):
    """can_run("cuda-wgmma") says yes exactly when FASTRADER_CUDA_FWD=wgmma runs the call, and its
    reason names the same cause as the kernel's refusal."""
    from fastrader.attention.ops import can_run

    q = torch.randn(1, 2, 40, d, device="cuda", dtype=dtype)
    ok, why = can_run("cuda-wgmma", q, window=8, dilation=dilation)
    monkeypatch.setenv("FASTRADER_CUDA_FWD", "wgmma")
    try:
        torch.ops.fastrader.sparse_attn_fwd(q, q, q, 8, dilation, 0, 0.1)
        ran, err = True, ""
    except RuntimeError as exc:
        ran, err = False, str(exc)
    assert ok == ran, (why, err)
    if not ok:
        assert "refuses" in err
        # (can_run's words, the kernel's words) for each cause
        causes = (("float16/bfloat16", "dtype"), ("head_dim", "head_dim"), ("dilation", "dilation"),
                  ("compute capability", "compute capability"), ("sm_90a", "sm_90a"))
        ours, theirs = next(c for c in causes if c[0] in why)
        assert theirs in err, (why, err)


# ------------------------------------------------------------------- decode


def decode_kernel_registered():
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastrader::sparse_attn_decode", "CUDA")


def ring_cache(k, v, positions, window, dilation, sinks):
    """The ring-buffer caches after writing keys 0..pos of each sequence, in order.

    Slots that no key reached hold NaN, so reading one shows in the output.
    """
    b, h, n, d = k.shape
    span = window * dilation
    kc = torch.full((b, h, sinks + span, d), float("nan"), device=k.device, dtype=k.dtype)
    vc = kc.clone()
    for bi, p in enumerate(positions):
        for j in range(p + 1):
            slot = j if j < sinks else sinks + j % span
            kc[bi, :, slot] = k[bi, :, j]
            vc[bi, :, slot] = v[bi, :, j]
    return kc, vc


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16, torch.float32, torch.float64), ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("d,window,dilation,sinks", [(64, 16, 1, 0), (8, 5, 3, 2), (32, 7, 2, 9), (128, 40, 1, 1),
                                                     (24, 1, 1, 0), (16, 3, 4, 0)])
def test_decode_matches_forward_row(dtype, d, window, dilation, sinks):
    if not decode_kernel_registered():
        pytest.fail("fastrader::sparse_attn_decode has no CUDA kernel")
    b, h = 3, 2
    span = window * dilation
    n = sinks + 2 * span + 5  # the ring wraps twice for the last positions
    q, k, v, _, _ = random_inputs(b, h, n, d, dtype, seed=d * 7 + window)
    scale = 1.0 / math.sqrt(d)
    positions = [n - 1, max(0, sinks + span // 2 - 1), n - 2]  # wrapped, not yet full, wrapped
    kc, vc = ring_cache(k, v, positions, window, dilation, sinks)
    pos = torch.tensor(positions, device="cuda", dtype=torch.int64)
    qd = torch.stack([q[bi, :, p] for bi, p in enumerate(positions)])
    got = torch.ops.fastrader.sparse_attn_decode(qd, kc, vc, pos, window, dilation, sinks, scale)
    assert got.shape == (b, h, d) and got.dtype == dtype
    assert torch.isfinite(got).all(), "decode read a slot that no key was written to"

    mask = allowed(n, window, dilation, sinks, "cuda")
    r64 = reference(q.double(), k.double(), v.double(), mask, scale)[0]
    rlow = reference(q, k, v, mask, scale)[0] if dtype != torch.float64 else None
    want = torch.stack([r64[bi, :, p] for bi, p in enumerate(positions)])
    err = max_err(got, want)
    mag = want.abs().max().item()
    if dtype == torch.float64:
        bound = 1e-10 * mag
    elif dtype == torch.float32:
        bound = 1e-5 * mag
    else:
        low = torch.stack([rlow[bi, :, p] for bi, p in enumerate(positions)])
        bound = 2.0 * max_err(low, want) + 0.5 * torch.finfo(dtype).eps * mag
    assert err <= bound, f"decode err {err:.3e} > {bound:.3e}"
    # and the full forward op's own row agrees
    fwd = torch.ops.fastrader.sparse_attn_fwd(q, k, v, window, dilation, sinks, scale)[0]
    rows = torch.stack([fwd[bi, :, p] for bi, p in enumerate(positions)])
    assert max_err(got, rows) <= 2 * bound + (1e-6 if dtype == torch.float32 else 0.0)


def test_decode_in_cuda_graph():
    if not decode_kernel_registered():
        pytest.fail("fastrader::sparse_attn_decode has no CUDA kernel")
    b, h, d, window, dilation, sinks = 2, 4, 64, 32, 2, 1
    slots = sinks + window * dilation
    gen = torch.Generator(device="cuda").manual_seed(9)
    q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    kc = torch.randn(b, h, slots, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    vc = torch.randn(b, h, slots, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    pos = torch.tensor([5, 400], device="cuda", dtype=torch.int64)
    args = (window, dilation, sinks, 0.125)
    step = lambda: torch.ops.fastrader.sparse_attn_decode(q, kc, vc, pos, *args)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for p0, p1 in ((7, 401), (0, 1000), (64, 65)):
        pos.copy_(torch.tensor([p0, p1]))
        q.copy_(torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16, generator=gen))
        kc.copy_(torch.randn(b, h, slots, d, device="cuda", dtype=torch.bfloat16, generator=gen))
        graph.replay()
        assert torch.equal(out, step()), (p0, p1)


# ------------------------------------------ Hopper wgmma forward (fwd_wgmma_sm90.cu)

# Whether FASTRADER_CUDA_FWD unset ("auto") takes the wgmma kernel when it
# accepts a call (kWgmmaByDefault in fwd_wgmma_sm90.cu).
WGMMA_BY_DEFAULT = True


def _is_sm90():
    return torch.cuda.get_device_capability() == (9, 0)


class _FwdEnv:
    """FASTRADER_CUDA_FWD set to `value` (None: unset) inside the block; the
    op reads it on every call."""

    def __init__(self, value):
        self.value = value

    def __enter__(self):
        self.prev = os.environ.get("FASTRADER_CUDA_FWD")
        if self.value is None:
            os.environ.pop("FASTRADER_CUDA_FWD", None)
        else:
            os.environ["FASTRADER_CUDA_FWD"] = self.value

    def __exit__(self, *exc):
        if self.prev is None:
            os.environ.pop("FASTRADER_CUDA_FWD", None)
        else:
            os.environ["FASTRADER_CUDA_FWD"] = self.prev


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize(
    "b,h,n,window,sinks",
    [
        (1, 1, 1, 5, 0),
        (2, 2, 127, 33, 0),
        (1, 3, 300, 1000, 0),  # window > N: dense causal
        (2, 1, 257, 1, 1),
        (1, 2, 517, 64, 3),
        (1, 2, 1100, 256, 130),  # sinks over two key tiles
        (2, 2, 1500, 700, 0),  # many key tiles: every stage is reused
    ],
)
def test_wgmma_forward(dtype, d, b, h, n, window, sinks):
    """The wgmma kernel (forced) matches the float64 reference, the backward
    runs on its lse, and the default dispatch takes the same kernel."""
    if not _is_sm90():
        pytest.skip("the wgmma forward needs a compute capability 9.0 device")
    seed = zlib.crc32(repr(("wgmma", str(dtype), d, b, h, n, window, sinks)).encode())
    with _FwdEnv("wgmma"):
        (q, k, v, *_rest, scale), (out, lse, *_g) = run_case(b, h, n, d, window, 1, sinks, dtype, seed)
    ops = torch.ops.fastrader
    with _FwdEnv(None):
        out_d, lse_d = ops.sparse_attn_fwd(q, k, v, window, 1, sinks, scale)
    with _FwdEnv("mma"):
        out_m, lse_m = ops.sparse_attn_fwd(q, k, v, window, 1, sinks, scale)
    if WGMMA_BY_DEFAULT:
        assert torch.equal(out_d, out) and torch.equal(lse_d, lse), "the default dispatch did not take the wgmma kernel"
    else:
        assert torch.equal(out_d, out_m) and torch.equal(lse_d, lse_m)
    # the two kernels agree to rounding (different summation orders)
    tol = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), out_m.float(), rtol=tol, atol=tol * out_m.abs().max().item())
    torch.testing.assert_close(lse, lse_m, rtol=1e-5, atol=1e-5)


_WGMMA_ENV_SCRIPT = """
import os, torch, fastrader._C
ops = torch.ops.fastrader
sm90 = torch.cuda.get_device_capability() == (9, 0)
def rnd(d, dtype=torch.bfloat16, n=70):
    return torch.randn(1, 2, n, d, device="cuda").to(dtype)
q = rnd(64)
os.environ["FASTRADER_CUDA_FWD"] = "mma"
ref = ops.sparse_attn_fwd(q, q, q, 9, 1, 0, 0.125)
print("mma ok")
os.environ["FASTRADER_CUDA_FWD"] = "wgmma"
cases = [((rnd(32), 9, 1, 0), "head_dim"), ((rnd(64, torch.float32), 9, 1, 0), "dtype")]
cases.append(((rnd(64), 9, 2, 0), "dilation") if sm90 else ((rnd(64), 9, 1, 0), "sm_90a"))
for (t, w, dil, s), want in cases:
    try:
        ops.sparse_attn_fwd(t, t, t, w, dil, s, 0.125)
    except RuntimeError as exc:
        assert "FASTRADER_CUDA_FWD=wgmma" in str(exc) and want in str(exc), (want, str(exc))
        print("refused:", want)
    else:
        raise SystemExit("no error for " + want)
if sm90:
    out = ops.sparse_attn_fwd(q, q, q, 9, 1, 0, 0.125)
    assert (out[0].float() - ref[0].float()).abs().max().item() < 2e-2
    print("wgmma ok")
os.environ["FASTRADER_CUDA_FWD"] = "bogus"
try:
    ops.sparse_attn_fwd(q, q, q, 9, 1, 0, 0.125)
except RuntimeError as exc:
    assert "FASTRADER_CUDA_FWD must be" in str(exc), str(exc)
    print("bogus refused")
else:
    raise SystemExit("no error for a bad FASTRADER_CUDA_FWD")
"""


def test_wgmma_env_switch():
    """FASTRADER_CUDA_FWD=mma runs the mma.sync kernel, =wgmma the wgmma one or
    an error that says why it refuses (in a child process, like
    test_rejects_bad_input)."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))))
    proc = subprocess.run([sys.executable, "-c", _WGMMA_ENV_SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "mma ok" in proc.stdout and "bogus refused" in proc.stdout, proc.stdout
    assert proc.stdout.count("refused:") == 3, proc.stdout
    if _is_sm90():
        assert "wgmma ok" in proc.stdout, proc.stdout
