"""Speed of the fastrader sparse attention CUDA op against PyTorch's SDPA.

    python benchmarks/attention_cuda.py [--dtype bfloat16] [--reps 20] [--json PATH]

Impls per case (B, H, N, D, window W; dilation 1, no sinks):
  fastrader   torch.ops.fastrader.sparse_attn_fwd (+ its backward through autograd)
  sdpa-dense  F.scaled_dot_product_attention(is_causal=True): full causal
              attention, more work than the window needs; the usual baseline
  sdpa-mask   F.scaled_dot_product_attention with the boolean window mask
              (same result as ours; the mask costs O(N^2) memory)
Passes: "fwd" and "fwd+bwd". Times are medians of CUDA-event timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: use its fastrader
    sys.path.insert(0, str(ROOT))


def window_mask(n, window, device):
    i = torch.arange(n, device=device).unsqueeze(1)
    j = torch.arange(n, device=device).unsqueeze(0)
    return (j <= i) & (i - j < window)


def time_ms(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_case(b, h, n, d, window, dtype, reps):
    import fastrader.attention as fa

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, g = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=gen) for _ in range(4))
    scale = 1.0 / d**0.5
    mask = window_mask(n, window, "cuda")
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

    def ours_fwd():
        torch.ops.fastrader.sparse_attn_fwd(q, k, v, window, 1, 0, scale)

    def ours_fb():
        out = fa.sparse_attention(qg, kg, vg, window=window, dilation=1, sinks=0, scale=scale)
        torch.autograd.grad(out, (qg, kg, vg), g)

    def dense_fwd():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def dense_fb():
        out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, scale=scale)
        torch.autograd.grad(out, (qg, kg, vg), g)

    def mask_fwd():
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def mask_fb():
        out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale)
        torch.autograd.grad(out, (qg, kg, vg), g)

    # sanity: ours equals the masked SDPA before timing anything
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale)
    ours = torch.ops.fastrader.sparse_attn_fwd(q, k, v, window, 1, 0, scale)[0].float()
    err = (ours - ref).abs().max().item()
    assert err < (1e-4 if dtype == torch.float32 else 3e-2), f"fastrader differs from masked SDPA by {err}"

    case = f"B={b},H={h},N={n},D={d},W={window}"
    rows = []
    for impl, fwd, fb in (("fastrader", ours_fwd, ours_fb), ("sdpa-dense", dense_fwd, dense_fb),
                          ("sdpa-mask", mask_fwd, mask_fb)):
        for name, fn in (("fwd", fwd), ("fwd+bwd", fb)):
            try:
                ms = time_ms(fn, reps)
            except RuntimeError as exc:  # e.g. out of memory for the mask at large N
                print(f"{case} {impl} {name}: failed: {str(exc).splitlines()[0]}")
                continue
            rows.append({"case": case, "impl": impl, "pass": name, "ms": ms})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    p.add_argument("--quick", action="store_true", help="two small cases only")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("attention_cuda.py needs a CUDA device")
    dtype = getattr(torch, args.dtype)
    cases = [(1, 8, 2048, 32, 256), (1, 8, 8192, 32, 256), (1, 8, 8192, 64, 256), (4, 8, 4096, 64, 128),
             (1, 8, 16384, 64, 512)]
    if args.quick:
        cases = cases[:2]
    rows = []
    print(f"{torch.cuda.get_device_name()}  dtype={args.dtype}  (median ms)")
    print(f"{'case':32s} {'pass':8s} {'fastrader':>10s} {'sdpa-dense':>11s} {'sdpa-mask':>10s}")
    for case in cases:
        got = bench_case(*case, dtype, args.reps)
        rows += got
        for name in ("fwd", "fwd+bwd"):
            ms = {r["impl"]: r["ms"] for r in got if r["pass"] == name}
            cells = [f"{ms[i]:10.3f}" if i in ms else f"{'-':>10s}" for i in ("fastrader", "sdpa-dense", "sdpa-mask")]
            print(f"{got[0]['case']:32s} {name:8s} {cells[0]} {cells[1]:>11s} {cells[2]}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
