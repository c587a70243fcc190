"""Training speed of the seed-size model on one GPU with each attention implementation.

    python benchmarks/train_cuda.py [--batch 16] [--bars 2048] [--window 256] [--steps 30] [--json PATH]

The model is ``fastrader.model.presets.seed_config`` (5 features -> 64 wide,
4 layers, 8 heads of head_dim 8, window W per layer, dilation 1, one learned
sink token), random init, on random features and targets. One training step =
bf16 autocast forward, MSE loss, backward, AdamW step (what
``fastrader.model.train`` does, minus gradient clipping and the data
pipeline). Eager PyTorch, as a training loop runs: each step is timed with
CUDA events after warm-up steps, and the median is reported. All
implementations run in one process on the same model weights and data.

Implementations (the attention call inside ``SparseSelfAttention`` swapped,
everything else identical):

  fastrader    our op (``fastrader`` backend): window W plus the sink token
  sdpa-dense   ``F.scaled_dot_product_attention(is_causal=True)``: every
               earlier bar (the dense causal peer of the issue's acceptance;
               a different, larger function)
  sdpa-band    the model's ``sdpa`` backend: the same band+sink function as
               ours, as chunked SDPA with boolean masks
  fa2-local    ``torch.ops.aten._flash_attention_forward`` with
               window_size_left=W-1 (the FlashAttention-2 bundled with
               PyTorch); it has no sink token, so the sink is seen only inside
               the window (not quite the same function)
  flex         ``torch.compile(flex_attention)`` with a band+sink block mask;
               flex refuses head_dim < 16, so q, k, v are zero-padded to 16
               (scores unchanged) and the output sliced back

Modes (--modes): ``eager``, plain calls, as a training loop runs them (host
launch overhead included: at this size the step is partly bound by it);
``graph``, the whole step (forward, backward, AdamW with capturable=True)
captured once in a CUDA graph and replayed (GPU time only); ``compile`` and
``compile-graph``, the same two with the model under ``torch.compile``;
``compile-ro``, plain steps with the model under
``torch.compile(mode="reduce-overhead")`` (Inductor's CUDA graphs of the
forward and backward, the optimiser step outside them), which is what
``fastrader train --compile`` runs on a GPU. Inductor fuses the layer norms, the bias
reductions and the elementwise work around the attention call, which is
kept as the opaque op it is (ours is a registered custom op; the peers are
their own kernels). The optimiser is the fused AdamW (one kernel for all
parameters), as ``fastrader.model.train`` uses on a GPU. --attention adds
the attention op alone at the model's shape; --profile IMPL,... prints
torch.profiler's kernel table for eager steps.

Prints a table (ms per step, tokens/s = batch * bars / step time, ratio to
ours) and writes rows {"case", "impl", "pass": "train-step eager"|"train-step
graph", "ms", "tokens_per_s"} (and the --attention rows) with --json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: use its fastrader
    sys.path.insert(0, str(ROOT))

IMPLS = ("fastrader", "sdpa-dense", "sdpa-band", "fa2-local", "flex")


def make_attend(impl, n_tokens, window, sinks):
    """attend(q, k, v, window=, dilation=, sinks=, backend=) replacement for one impl."""
    from fastrader.model import attend as attend_mod

    if impl == "fastrader":
        return lambda q, k, v, **kw: attend_mod.attend(q, k, v, **{**kw, "backend": "fastrader"})
    if impl == "sdpa-band":
        return lambda q, k, v, **kw: attend_mod.attend(q, k, v, **{**kw, "backend": "sdpa"})
    if impl == "sdpa-dense":
        return lambda q, k, v, **kw: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if impl == "fa2-local":
        fl = torch.ops.aten._flash_attention_forward

        def fa2(q, k, v, **kw):
            n, d = q.shape[-2], q.shape[-1]
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, H, D), last dim contiguous
            out = fl(qt, kt, vt, None, None, n, n, 0.0, True, False, scale=1.0 / math.sqrt(d),
                     window_size_left=kw["window"] - 1, window_size_right=0)[0]
            return out.transpose(1, 2)

        return fa2
    if impl == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def band(b_, h_, qi, ki):
            diff = qi - ki
            return (diff >= 0) & ((diff < window) | (ki < sinks))

        mask = create_block_mask(band, None, None, n_tokens, n_tokens, device="cuda")
        flex = torch.compile(flex_attention, dynamic=False)

        def flex_attend(q, k, v, **kw):
            d = q.shape[-1]
            if d < 16:  # flex needs head_dim >= 16: zero columns change no score
                q, k, v = (F.pad(t, (0, 16 - d)) for t in (q, k, v))
            return flex(q, k, v, block_mask=mask, scale=1.0 / math.sqrt(d))[..., :d]

        return flex_attend
    raise ValueError(impl)


def run_impl(impl, args, x, y, state, mode="eager"):
    """Median ms of one training step: plain calls (eager) or replays of the step captured in a CUDA graph."""
    from fastrader.model import transformer
    from fastrader.model.presets import seed_config
    from fastrader.model.transformer import CausalTransformer
    from fastrader.model.train import _adamw

    cfg = seed_config(window=args.window, sinks=args.sinks)
    n_tokens = args.bars + cfg.sinks
    orig = transformer.attend
    transformer.attend = make_attend(impl, n_tokens, cfg.window, cfg.sinks)
    graph_mode = mode.endswith("graph")
    try:
        torch.manual_seed(0)
        model = CausalTransformer(cfg).to(x.device)
        model.load_state_dict(state)
        opt = _adamw(model, x.device, lr=1e-4, capturable=graph_mode)  # fused on a GPU, as train uses
        # compiled after the attention swap above, so the traced graph calls this impl
        if mode == "compile-ro":
            fwd = torch.compile(model, dynamic=False, mode="reduce-overhead")
        elif mode.startswith("compile"):
            fwd = torch.compile(model, dynamic=False)
        else:
            fwd = model

        def fwd_bwd_step():
            # a graph must not keep autocast's cast-weight cache across replays
            with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=not graph_mode):
                pred = fwd(x)
            loss = F.mse_loss(pred.float(), y)
            loss.backward()
            opt.step()

        def step():
            opt.zero_grad(set_to_none=True)
            if mode == "compile-ro":
                torch.compiler.cudagraph_mark_step_begin()
            fwd_bwd_step()

        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
            out0 = model(x).float()
        if x.device.type != "cuda":  # smoke test of the script on a machine without a GPU
            for _ in range(args.warmup):
                step()
            return 0.0, out0
        if graph_mode:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(3, args.warmup // 2)):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            opt.zero_grad(set_to_none=True)  # grads are allocated inside the graph and overwritten by each replay
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fwd_bwd_step()
            run = graph.replay
            for _ in range(3):
                run()
        else:
            run = step
            for _ in range(args.warmup):
                run()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.steps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            run()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        if args.profile and impl in args.profile and not graph_mode:
            profile_steps(impl, step)
        return statistics.median(times), out0
    finally:
        transformer.attend = orig


def profile_steps(impl, step, n=3):
    """torch.profiler over n eager steps: GPU kernel time per step against the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    dev_us = sum(getattr(e, "self_device_time_total", 0.0) for e in ka) / n
    print(f"\n  profile {impl}: GPU time {dev_us / 1e3:.3f} ms per step (sum of kernel self time); top kernels:")
    try:
        print(ka.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
    except Exception:  # noqa: BLE001  (older profiler column names)
        print(ka.table(sort_by="self_cuda_time_total", row_limit=14))


def attention_rows(args, case):
    """The attention op alone at the model's shape, fwd+bwd, graph replays and eager calls (ms)."""
    from triton.testing import do_bench, do_bench_cudagraph

    from fastrader.model.presets import seed_config

    cfg = seed_config(window=args.window, sinks=args.sinks)
    B, H, N, D = args.batch, cfg.n_heads, args.bars + cfg.sinks, cfg.d_model // cfg.n_heads
    gen = torch.Generator(device="cuda").manual_seed(2)
    q, k, v, g = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    fns = {}
    for impl in ("fastrader", "fastrader-nosink", "sdpa-dense", "fa2-local"):
        if impl == "fastrader-nosink":
            attend = make_attend("fastrader", N, cfg.window, 0)
            kw = dict(window=cfg.window, dilation=1, sinks=0)
        else:
            attend = make_attend(impl, N, cfg.window, cfg.sinks)
            kw = dict(window=cfg.window, dilation=1, sinks=cfg.sinks)

        def fb(attend=attend, kw=kw):
            out = attend(qg, kg, vg, **kw)
            torch.autograd.grad(out, (qg, kg, vg), g)

        fns[impl] = fb
    rows = []
    name = f"attention only B={B},H={H},N={N},D={D},W={cfg.window}"
    for impl, fb in fns.items():
        try:
            rows.append({"case": name, "impl": impl, "pass": "fwd+bwd graph",
                         "ms": do_bench_cudagraph(fb, rep=50, return_mode="median")})
            rows.append({"case": name, "impl": impl, "pass": "fwd+bwd eager",
                         "ms": do_bench(fb, warmup=25, rep=100, return_mode="median")})
        except Exception as exc:  # noqa: BLE001
            print(f"  attention {impl}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
    for r in rows:
        print(f"  {r['case']:44s} {r['impl']:17s} {r['pass']:14s} {r['ms']:.4f} ms", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bars", type=int, default=2048)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--sinks", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {IMPLS}")
    p.add_argument("--modes", default="eager,graph,compile,compile-ro,compile-graph",
                   help="eager: plain calls (what a training loop runs); graph: the whole step in a CUDA graph; "
                        "compile, compile-graph: the same with the model under torch.compile; compile-ro: "
                        "plain steps, the model under torch.compile(mode='reduce-overhead') (fastrader train --compile)")
    p.add_argument("--profile", default="", help="comma list of impls to profile (eager, torch.profiler)")
    p.add_argument("--attention", action="store_true", help="also time the attention op alone at the model's shape")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: untimed smoke test
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: train_cuda.py needs a CUDA device", file=sys.stderr)
        return 2
    import fastrader.attention  # noqa: F401  (the op and its autograd formula)
    from fastrader.model.presets import SEED_FEATURES, seed_config
    from fastrader.model.transformer import CausalTransformer

    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for i in impls:
        if i not in IMPLS:
            p.error(f"unknown impl {i!r}")
    cfg = seed_config(window=args.window, sinks=args.sinks)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in CausalTransformer(cfg).state_dict().items()}
    gen = torch.Generator(device=args.device).manual_seed(1)
    x = torch.randn(args.batch, args.bars, len(SEED_FEATURES.names), device=args.device, generator=gen)
    y = torch.randn(args.batch, args.bars, device=args.device, generator=gen)
    case = (f"seed model B={args.batch},N={args.bars},C={cfg.d_model},L={cfg.n_layers},H={cfg.n_heads},"
            f"D={cfg.d_model // cfg.n_heads},W={cfg.window},sinks={cfg.sinks}")
    tokens = args.batch * args.bars
    print(f"{torch.cuda.get_device_name() if args.device == 'cuda' else args.device}  torch {torch.__version__}  {case}")
    print(f"one step = bf16 autocast fwd + MSE + bwd + AdamW; median of {args.steps} after {args.warmup} warm-up")
    args.profile = {i.strip() for i in args.profile.split(",") if i.strip()}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows, notes, ref = [], {}, None
    for mode in modes:
        for impl in impls:
            try:
                ms, out0 = run_impl(impl, args, x, y, state, mode)
            except Exception as exc:  # noqa: BLE001  (a peer that fails is reported, not fatal)
                msg = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                notes[f"{impl} ({mode})"] = msg
                print(f"  {impl:11s} {mode:6s} {msg}", flush=True)
                torch.cuda.synchronize()
                continue
            if impl == "fastrader":
                ref = out0
            elif ref is not None and mode == modes[0]:
                notes[impl] = f"max |score - fastrader's| = {(out0 - ref).abs().max().item():.3g} (forward, bf16)"
            if args.device != "cuda":
                print(f"  {impl:11s} ran (untimed on {args.device}); {notes.get(impl, '')}")
                continue
            rows.append({"case": case, "impl": impl, "pass": f"train-step {mode}", "ms": ms,
                         "tokens_per_s": tokens / ms * 1e3})
            print(f"  {impl:11s} {mode:6s} {ms:8.3f} ms/step  {tokens / ms * 1e3:12.0f} tokens/s", flush=True)
            torch.cuda.empty_cache()
    if args.attention and args.device == "cuda":
        rows += attention_rows(args, case)
    print(f"\n{'impl':12s} {'mode':6s} {'ms/step':>9s} {'tokens/s':>12s}  {'its ms / ours':>14s}")
    for r in rows:
        if not r["pass"].startswith("train-step"):
            continue
        mode = r["pass"].split()[-1]
        ours = next((o["ms"] for o in rows if o["impl"] == "fastrader" and o["pass"] == r["pass"]), None)
        ratio = f"{r['ms'] / ours:.2f}x" if ours else "-"
        print(f"{r['impl']:12s} {mode:6s} {r['ms']:9.3f} {r['tokens_per_s']:12.0f}  {ratio:>14s}")
    for impl, note in notes.items():
        print(f"  note {impl}: {note}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
