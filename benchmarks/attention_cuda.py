"""Speed of the fastrader sparse-attention CUDA op against the best GPU peers.

    python benchmarks/attention_cuda.py [--dtype bfloat16] [--json PATH] [--quick | --small] [--no-flex] [--no-decode]

One process, one GPU; every time is a median from triton.testing: by default
do_bench_cudagraph (the call captured in a CUDA graph and replayed, so the
time is GPU time without Python/launch gaps, the same for every impl), with
--eager do_bench of plain calls (what a Python training loop sees). One
untimed call first also checks each peer's output against ours. Impls per case (B, H, N, D), window W
(keys i-W+1..i), dilation 1 and no sinks unless the case says so:

  fastrader  torch.ops.fastrader.sparse_attn_fwd; fwd+bwd through autograd
  fa4        flash_attn.cute.flash_attn_func(causal=True, window_size=(W-1, 0)),
             when the flash-attn-4 package imports (it is not on the GPU image)
  fa2-local  torch.ops.aten._flash_attention_forward with
             window_size_left=W-1, window_size_right=0 (the FlashAttention-2
             bundled with PyTorch); (B, N, H, D) inputs; backward through autograd
  flex       torch.compile(flex_attention) with a create_block_mask band mask
             (dilation in the mask_mod); refuses head dims < 16
  decode     (pass "decode") torch.ops.fastrader.sparse_attn_decode for one
             query per (batch, head) over a ring-buffer cache: per step inside
             one CUDA graph of 64 steps ("fastrader-graph"), and plain calls

Prints a table with each impl's ratio to the best peer (best peer ms / ours:
above 1 means ours is faster) and writes rows {"case", "impl", "pass", "ms"}
with --json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: use its fastrader
    sys.path.insert(0, str(ROOT))

# (B, H, N, D, W, dilation): the table, the dilated case and the
# default model's attention shape (batch 16 x seq 512, 4 heads of 8, W=48).
CASES = [
    (1, 8, 131072, 64, 1024, 1),
    (1, 8, 131072, 64, 256, 1),
    (4, 16, 16384, 64, 512, 1),
    (8, 8, 2048, 32, 256, 1),
    (8, 8, 2048, 16, 256, 1),
    (8, 8, 2048, 8, 256, 1),
    (1, 8, 131072, 64, 256, 4),
    (16, 4, 512, 8, 48, 1),
]
QUICK = [CASES[3], CASES[7]]
SMALL = [CASES[3], CASES[4], CASES[5], CASES[7]]  # head dims 8-32 (milestone 2) and the default model
PEERS = ("fa4", "fa2-local", "flex")


def case_name(b, h, n, d, w, dil):
    return f"B={b},H={h},N={n},D={d},W={w}" + (f",dil={dil}" if dil != 1 else "")


MODE = {"graph": True}


def bench(fn):
    """Median ms of fn: replays of a CUDA graph of fn (default), or eager calls."""
    from triton.testing import do_bench, do_bench_cudagraph

    if MODE["graph"]:
        return do_bench_cudagraph(fn, rep=50, return_mode="median")
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def load_fa4():
    try:
        from flash_attn.cute import flash_attn_func  # flash-attn-4
    except Exception as exc:  # noqa: BLE001  (absent or broken: say which)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    return flash_attn_func, None


def make_impls(b, h, n, d, w, dil, dtype, flex_ok, fa4):
    """name -> (fwd, fwd+bwd, output-of-fwd for the check) or a reason string."""
    import fastrader.attention as fa

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, g = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=gen) for _ in range(4))
    scale = 1.0 / math.sqrt(d)
    impls = {}

    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

    def ours_fwd():
        return torch.ops.fastrader.sparse_attn_fwd(q, k, v, w, dil, 0, scale)[0]

    def ours_fb():
        out = fa.sparse_attention(qg, kg, vg, window=w, dilation=dil, sinks=0, scale=scale)
        torch.autograd.grad(out, (qg, kg, vg), g)

    impls["fastrader"] = (ours_fwd, ours_fb, ours_fwd)

    # peers take (B, N, H, D)
    qt, kt, vt, gt = (t.transpose(1, 2).contiguous() for t in (q, k, v, g))
    qtg, ktg, vtg = (t.clone().requires_grad_(True) for t in (qt, kt, vt))

    if fa4 is None:
        impls["fa4"] = "not installed"
    elif dil != 1:
        impls["fa4"] = "no dilation"
    else:
        def fa4_fwd():
            out = fa4(qt, kt, vt, softmax_scale=scale, causal=True, window_size=(w - 1, 0))
            return out[0] if isinstance(out, tuple) else out

        def fa4_fb():
            out = fa4(qtg, ktg, vtg, softmax_scale=scale, causal=True, window_size=(w - 1, 0))
            out = out[0] if isinstance(out, tuple) else out
            torch.autograd.grad(out, (qtg, ktg, vtg), gt)

        impls["fa4"] = (fa4_fwd, fa4_fb, lambda: fa4_fwd().transpose(1, 2))

    if dil != 1:
        impls["fa2-local"] = "no dilation"
    else:
        fl = torch.ops.aten._flash_attention_forward

        def fa2(x, y, z):
            return fl(x, y, z, None, None, n, n, 0.0, True, False, scale=scale, window_size_left=w - 1,
                      window_size_right=0)[0]

        def fa2_fwd():
            return fa2(qt, kt, vt)

        def fa2_fb():
            torch.autograd.grad(fa2(qtg, ktg, vtg), (qtg, ktg, vtg), gt)

        impls["fa2-local"] = (fa2_fwd, fa2_fb, lambda: fa2_fwd().transpose(1, 2))

    if not flex_ok:
        impls["flex"] = "skipped (--no-flex)"
    elif d < 16:
        impls["flex"] = "refuses head_dim < 16"
    else:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def band(b_, h_, qi, ki):
            diff = qi - ki
            ok = (diff >= 0) & (diff < w * dil)
            return ok & (diff % dil == 0) if dil != 1 else ok

        # _compile: build the block mask block by block (the plain path
        # materialises an N x N mask: 16 GiB at N = 131072)
        mask = create_block_mask(band, None, None, n, n, device="cuda", _compile=True)
        flex = torch.compile(flex_attention, dynamic=False)

        def flex_fwd():
            return flex(q, k, v, block_mask=mask, scale=scale)

        def flex_fb():
            out = flex(qg, kg, vg, block_mask=mask, scale=scale)
            torch.autograd.grad(out, (qg, kg, vg), g)

        impls["flex"] = (flex_fwd, flex_fb, flex_fwd)
    return impls


def run_case(case, dtype, flex_ok, fa4):
    name = case_name(*case)
    impls = make_impls(*case, dtype, flex_ok, fa4)
    rows, notes = [], []
    ours_out = impls["fastrader"][2]().float()
    for impl, val in impls.items():
        if isinstance(val, str):
            notes.append(f"{impl}: {val}")
            continue
        fwd, fb, check = val
        try:
            if impl != "fastrader":  # same function as ours?
                err = (check().float() - ours_out).abs().max().item()
                if not err < 5e-2:
                    notes.append(f"{impl}: differs from fastrader by {err:.3g}")
            rows.append({"case": name, "impl": impl, "pass": "fwd", "ms": bench(fwd)})
            rows.append({"case": name, "impl": impl, "pass": "fwd+bwd", "ms": bench(fb)})
        except Exception as exc:  # noqa: BLE001  (a peer that fails is reported, not fatal)
            notes.append(f"{impl}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}")
    del impls
    torch.cuda.empty_cache()
    return rows, notes


def decode_rows(dtype, b=1, h=8, d=64, w=2048, dil=1, sinks=0):
    """Decode step time at the issue's shape: graph replay and plain call."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    slots = sinks + w * dil
    q = torch.randn(b, h, d, device="cuda", dtype=dtype, generator=gen)
    kc = torch.randn(b, h, slots, d, device="cuda", dtype=dtype, generator=gen)
    vc = torch.randn(b, h, slots, d, device="cuda", dtype=dtype, generator=gen)
    pos = torch.full((b,), 10 * slots + 3, device="cuda", dtype=torch.int64)  # the ring has wrapped
    scale = 1.0 / math.sqrt(d)

    def step():
        return torch.ops.fastrader.sparse_attn_decode(q, kc, vc, pos, w, dil, sinks, scale)

    from triton.testing import do_bench

    step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    steps = 64
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            step()
    name = f"B={b},H={h},D={d},W={w}" + (f",dil={dil}" if dil != 1 else "")
    return [
        {"case": name, "impl": "fastrader-graph", "pass": "decode",
         "ms": do_bench(graph.replay, warmup=25, rep=100, return_mode="median") / steps},
        {"case": name, "impl": "fastrader", "pass": "decode", "ms": do_bench(step, warmup=25, rep=100, return_mode="median")},
    ]


def print_table(rows, notes_by_case):
    cases = list(dict.fromkeys(r["case"] for r in rows))
    print(f"\n{'case':38s} {'pass':8s} {'fastrader':>10s} {'fa4':>9s} {'fa2-local':>10s} {'flex':>9s}  best peer / ours")
    for case in cases:
        for pas in ("fwd", "fwd+bwd"):
            ms = {r["impl"]: r["ms"] for r in rows if r["case"] == case and r["pass"] == pas}
            if not ms:
                continue
            cells = [f"{ms[i]:.4f}" if i in ms else "-" for i in ("fastrader",) + PEERS]
            peers = {i: ms[i] for i in PEERS if i in ms}
            ratio = ""
            if peers and "fastrader" in ms:
                best = min(peers, key=peers.get)
                ratio = f"{peers[best] / ms['fastrader']:.2f}x vs {best}"
            print(f"{case:38s} {pas:8s} {cells[0]:>10s} {cells[1]:>9s} {cells[2]:>10s} {cells[3]:>9s}  {ratio}")
        for note in notes_by_case.get(case, []):
            print(f"{'':38s}   note: {note}")
    for r in rows:
        if r["pass"] == "decode":
            print(f"decode {r['case']:31s} {r['impl']:16s} {r['ms'] * 1000:8.2f} us/step")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    p.add_argument("--quick", action="store_true", help="two small cases only")
    p.add_argument("--small", action="store_true", help="the head-dim 8-32 cases and the default model's only")
    p.add_argument("--no-decode", action="store_true", help="skip the decode rows")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles take a while)")
    p.add_argument("--eager", action="store_true", help="time plain calls instead of CUDA-graph replays")
    args = p.parse_args(argv)
    MODE["graph"] = not args.eager
    if not torch.cuda.is_available():
        print("error: attention_cuda.py needs a CUDA device", file=sys.stderr)
        return 2
    import fastrader.attention  # noqa: F401  (loads the op and its autograd formula)

    dtype = getattr(torch, args.dtype)
    fa4, fa4_err = load_fa4()
    how = "eager calls, do_bench" if args.eager else "CUDA-graph replays, do_bench_cudagraph"
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  dtype={args.dtype}  (median ms, {how})")
    if fa4 is None:
        print(f"fa4: flash-attn-4 not importable ({fa4_err})")
    rows, notes = [], {}
    for case in QUICK if args.quick else SMALL if args.small else CASES:
        got, nt = run_case(case, dtype, not args.no_flex, fa4)
        rows += got
        notes[case_name(*case)] = nt
        for r in got:
            print(f"  {r['case']:38s} {r['impl']:10s} {r['pass']:8s} {r['ms']:.4f}", flush=True)
    if not args.no_decode and torch._C._dispatch_has_kernel_for_dispatch_key("fastrader::sparse_attn_decode", "CUDA"):
        rows += decode_rows(dtype)
    print_table(rows, notes)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
