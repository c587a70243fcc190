"""One forward and backward call of the attention op at a given shape, for ncu.

    ncu --clock-control none -k regex:mma python benchmarks/cuda_profile_case.py B H N D W [dil]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastrader import _C  # noqa: E402,F401

b, h, n, d, w = (int(x) for x in sys.argv[1:6])
dil = int(sys.argv[6]) if len(sys.argv) > 6 else 1
gen = torch.Generator(device="cuda").manual_seed(0)
q, k, v, g = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
ops = torch.ops.fastrader
out, lse = ops.sparse_attn_fwd(q, k, v, w, dil, 0, d**-0.5)
ops.sparse_attn_bwd(g, q, k, v, out, lse, w, dil, 0, d**-0.5, None)
torch.cuda.synchronize()
print("profiled", b, h, n, d, w, dil)
