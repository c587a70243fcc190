"""Small calls of every fastrader CUDA kernel, to run under compute-sanitizer.

    compute-sanitizer --tool memcheck python benchmarks/cuda_sanitize.py
    compute-sanitizer --tool racecheck python benchmarks/cuda_sanitize.py

Covers the tensor-core forward (mma.sync, and the wgmma one on sm_90), dQ, dK/dV and sink-reduction kernels (head
dims 16/64/128 tile widths, dilation, sinks spanning two key tiles), the
scalar float32 kernels, and the decode split + merge kernels.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastrader import _C  # noqa: E402,F401

ops = torch.ops.fastrader
gen = torch.Generator(device="cuda").manual_seed(0)


def rnd(*shape, dtype):
    return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)


# On an sm_90 device the bfloat16/float16 cases of head dim 64/128 with
# dilation 1 take the wgmma forward (fwd_wgmma_sm90.cu) by default: the last
# three rows are there for it (several key tiles and stages, a partial last
# query block, sinks over a tile of their own).
for dtype, d, n, w, dil, s in ((torch.bfloat16, 16, 150, 40, 2, 70), (torch.float16, 64, 97, 33, 1, 3),
                               (torch.bfloat16, 128, 80, 20, 3, 0), (torch.bfloat16, 24, 70, 70, 1, 1),
                               (torch.float32, 32, 50, 9, 2, 2), (torch.bfloat16, 64, 700, 300, 1, 0),
                               (torch.bfloat16, 128, 333, 150, 1, 0), (torch.float16, 64, 400, 100, 1, 130)):
    q, k, v, g = (rnd(1, 2, n, d, dtype=dtype) for _ in range(4))
    out, lse = ops.sparse_attn_fwd(q, k, v, w, dil, s, 0.2)
    dq, dk, dv = ops.sparse_attn_bwd(g, q, k, v, out, lse, w, dil, s, 0.2, rnd(1, 2, n, dtype=torch.float32))
    torch.cuda.synchronize()
    assert all(torch.isfinite(t.float()).all() for t in (out, lse, dq, dk, dv))
for dtype in (torch.bfloat16, torch.float32):
    w, dil, s, d = 50, 2, 2, 64
    kc, vc = (rnd(2, 2, s + w * dil, d, dtype=dtype) for _ in range(2))
    o = ops.sparse_attn_decode(rnd(2, 2, d, dtype=dtype), kc, vc, torch.tensor([3, 999], device="cuda"), w, dil, s, 0.1)
    torch.cuda.synchronize()
    assert torch.isfinite(o.float()).all()
print("sanitize run: ok")
