"""Whole-model decode step (one bar of CausalTransformer inference) on one GPU, through CUDA graphs.

    python benchmarks/decode_cuda.py [--models default,seed] [--bars 600] [--json PATH]

A benchmark-only measurement (nothing here is used by the library's
streaming path, which runs on the CPU: fastrader/model/decode.py). Models,
random weights scaled so that activations and attention are O(1):

  default  ModelConfig(n_features=16) (the run's default model: d_model 32,
           4 heads of 8, 2 layers, W=48, dilations [1, 4], one sink)
  seed     presets.seed_config(window=256) (5 -> 64, 4 layers, 8 heads of 8)

Implementations of one step, all starting from the state IncrementalModel
builds (packed weights, sink keys in the caches), float32:

  cuda-kernel  torch.ops.fastrader.decode_step_cuda: the whole step in one
               kernel (ext/csrc/cuda/decode_step.cu), state on the device
  torch-ops    the step as ~15 torch ops per layer, attention by our CUDA
               decode op (torch.ops.fastrader.sparse_attn_decode) over the
               same ring-buffer caches
  cpu-step     IncrementalModel.step on the host (decode_step C++ kernel), the
               path a backtest uses today

For each GPU implementation a CUDA graph of one bar is captured: H2D copy of
the feature row from pinned memory, the step, D2H copy of the score. Rows:

  graph-bar      wall time per bar of: write the row to pinned memory,
                 replay, synchronise, read the score (what a bar-by-bar loop
                 sees); median over --bars bars, which also check every score
                 against the full forward pass (float64, CPU) at that bar,
                 the ring buffers wrapping several times
  graph-replay   GPU time per replay, replays back to back (CUDA events / count)
  graph-step     the same for a graph of the step alone (no copies)
  eager-bar      the same step as plain calls (no graph), wall time per bar
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: use its fastrader
    sys.path.insert(0, str(ROOT))


def make_model(name):
    from fastrader.model.presets import seed_config
    from fastrader.model.transformer import CausalTransformer, ModelConfig
    from fastrader.testing.models import randomize_

    cfg = ModelConfig(n_features=16) if name == "default" else seed_config(window=256)
    torch.manual_seed(0)
    model = CausalTransformer(cfg).eval()
    randomize_(model)
    return cfg, model.set_backend("fastrader")


class TorchOpsStep:
    """The decode step as torch ops on the GPU; attention through our CUDA decode op."""

    def __init__(self, model, inc, cache, hist, pos, x, out):
        cfg = model.cfg
        dev = cache.device
        g = lambda t: t.detach().to(dev, torch.float32)  # noqa: E731
        self.C, self.H, self.D, self.sinks = cfg.d_model, cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.sinks
        self.inp_w, self.inp_b = g(model.inp.weight), g(model.inp.bias)
        self.conv_w = g(model.conv.conv.weight)[:, 0, :].T.contiguous()  # (k, C), row i for input t-(k-1)+i
        self.conv_b = g(model.conv.conv.bias)
        self.lnf = (g(model.ln_f.weight), g(model.ln_f.bias))
        self.head = (g(model.head.weight), g(model.head.bias))
        self.layers = []
        off = 0
        for blk, dil in zip(model.blocks, cfg.dilations):
            S = cfg.sinks + cfg.window * dil
            n = self.H * S * self.D
            K = cache[off : off + n].view(1, self.H, S, self.D)
            V = cache[off + n : off + 2 * n].view(1, self.H, S, self.D)
            off += 2 * n
            a = blk.attn
            self.layers.append(dict(
                ln1=(g(blk.ln1.weight), g(blk.ln1.bias)), qkv=(g(a.qkv.weight), g(a.qkv.bias)),
                proj=(g(a.proj.weight), g(a.proj.bias)), ln2=(g(blk.ln2.weight), g(blk.ln2.bias)),
                fc1=(g(blk.mlp[0].weight), g(blk.mlp[0].bias)), fc2=(g(blk.mlp[2].weight), g(blk.mlp[2].bias)),
                K=K, V=V, window=cfg.window, dil=dil, span=cfg.window * dil))
        self.hist, self.pos, self.x, self.out = hist, pos, x, out
        self.scale = 1.0 / math.sqrt(self.D)

    def __call__(self):
        C, H, D = self.C, self.H, self.D
        h = F.linear(self.x, self.inp_w, self.inp_b)
        self.hist.copy_(torch.cat([self.hist[1:], h[None]]))
        h = h + (self.conv_w * self.hist).sum(0) + self.conv_b
        for L in self.layers:
            a = F.layer_norm(h, (C,), *L["ln1"])
            qkv = F.linear(a, *L["qkv"])
            slot = self.sinks + torch.remainder(self.pos, L["span"])
            L["K"].index_copy_(2, slot, qkv[C : 2 * C].view(1, H, 1, D))
            L["V"].index_copy_(2, slot, qkv[2 * C :].view(1, H, 1, D))
            y = torch.ops.fastrader.sparse_attn_decode(qkv[:C].view(1, H, D), L["K"], L["V"], self.pos,
                                                        L["window"], L["dil"], self.sinks, self.scale)
            h = h + F.linear(y.view(C), *L["proj"])
            a = F.layer_norm(h, (C,), *L["ln2"])
            h = h + F.linear(F.gelu(F.linear(a, *L["fc1"])), *L["fc2"])
        self.out.copy_(F.linear(F.layer_norm(h, (C,), *self.lnf), *self.head))
        self.pos.add_(1)


def replay_ms(graph, replays, rounds=5):
    """GPU milliseconds per replay of ``graph``: median over rounds of ``replays`` back-to-back replays."""
    per = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        per.append(a.elapsed_time(b) / replays)
    return statistics.median(per)


def run_model(name, args):
    from fastrader.model.decode import IncrementalModel

    cfg, model = make_model(name)
    T = args.bars
    rng = np.random.default_rng(0)
    z = rng.standard_normal((T, cfg.n_features)).astype(np.float32)
    with torch.inference_mode():  # reference: the full forward pass in float64 on the CPU
        ref = model.double()(torch.from_numpy(z).double()[None])[0].numpy()
    model.float()
    inc = IncrementalModel(model)
    init_cache = torch.from_numpy(inc.cache.copy())
    params = torch.from_numpy(inc._pack())
    dims = (cfg.n_features, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.conv_kernel, cfg.sinks, cfg.window,
            list(cfg.dilations))
    span_max = max(cfg.window * d for d in cfg.dilations)
    case = (f"{name} model C={cfg.d_model},L={cfg.n_layers},H={cfg.n_heads},D={cfg.d_model // cfg.n_heads},"
            f"W={cfg.window},dil={cfg.dilations},sinks={cfg.sinks}")
    print(f"\n{case}: {T} bars (largest ring {span_max} slots: wraps {T / span_max:.1f} times)")
    rows = []

    # today's path: the CPU step kernel
    lat = []
    cpu_scores = np.empty(T)
    for t in range(T):
        t0 = time.perf_counter()
        cpu_scores[t] = inc.step(z[t])
        lat.append(time.perf_counter() - t0)
    err = np.abs(cpu_scores - ref).max() / np.abs(ref).max()
    rows.append({"case": case, "impl": "cpu-step", "pass": "eager-bar", "ms": statistics.median(lat) * 1e3,
                 "rel_err": float(err)})

    dev = torch.device("cuda")
    cache = init_cache.to(dev)
    hist = torch.zeros(cfg.conv_kernel, cfg.d_model, device=dev)
    pos = torch.full((1,), cfg.sinks, dtype=torch.int64, device=dev)
    x = torch.zeros(cfg.n_features, device=dev)
    out = torch.zeros(1, device=dev)
    x_host = torch.zeros(cfg.n_features, pin_memory=True)
    out_host = torch.zeros(1, pin_memory=True)
    params_d = params.to(dev)

    def reset():
        cache.copy_(init_cache)
        hist.zero_()
        pos.fill_(cfg.sinks)

    impls = {}
    if hasattr(torch.ops.fastrader, "decode_step_cuda"):
        impls["cuda-kernel"] = lambda: torch.ops.fastrader.decode_step_cuda(x, params_d, cache, hist, pos, out, *dims)
    impls["torch-ops"] = TorchOpsStep(model, inc, cache, hist, pos, x, out)

    for impl, step in impls.items():
        def bar():
            x.copy_(x_host, non_blocking=True)
            step()
            out_host.copy_(out, non_blocking=True)

        # eager: plain calls, every score checked
        reset()
        lat, scores = [], np.empty(T)
        for t in range(T):
            t0 = time.perf_counter()
            x_host.copy_(torch.from_numpy(z[t]))
            bar()
            torch.cuda.current_stream().synchronize()
            scores[t] = out_host.item()
            lat.append(time.perf_counter() - t0)
        err = np.abs(scores - ref).max() / np.abs(ref).max()
        rows.append({"case": case, "impl": impl, "pass": "eager-bar", "ms": statistics.median(lat) * 1e3,
                     "rel_err": float(err)})

        # graph of one bar
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                bar()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            bar()
        reset()
        torch.cuda.synchronize()
        lat, scores = [], np.empty(T)
        for t in range(T):
            t0 = time.perf_counter()
            x_host.copy_(torch.from_numpy(z[t]))
            graph.replay()
            torch.cuda.current_stream().synchronize()
            scores[t] = out_host.item()
            lat.append(time.perf_counter() - t0)
        err = np.abs(scores - ref).max() / np.abs(ref).max()
        rows.append({"case": case, "impl": impl, "pass": "graph-bar", "ms": statistics.median(lat) * 1e3,
                     "rel_err": float(err)})
        # back-to-back replays: GPU time per replay
        rows.append({"case": case, "impl": impl, "pass": "graph-replay", "ms": replay_ms(graph, args.replays)})
        del graph
        # the step alone (no copies) in a graph: GPU time per replay
        with torch.cuda.graph(gstep := torch.cuda.CUDAGraph()):
            step()
        rows.append({"case": case, "impl": impl, "pass": "graph-step", "ms": replay_ms(gstep, args.replays)})
        del gstep
    for r in rows:
        e = f"  max rel err vs full forward {r['rel_err']:.2e}" if "rel_err" in r else ""
        print(f"  {r['impl']:12s} {r['pass']:13s} {r['ms'] * 1e3:9.2f} us/bar{e}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="default,seed")
    p.add_argument("--bars", type=int, default=600, help="bars streamed (and checked) per implementation")
    p.add_argument("--replays", type=int, default=500, help="back-to-back replays per timing")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: decode_cuda.py needs a CUDA device", file=sys.stderr)
        return 2
    import fastrader.attention  # noqa: F401  (loads the ops)

    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  (float32; us per bar)")
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows += run_model(name, args)
    print(f"\n{'case':70s} {'impl':12s} {'pass':13s} {'us/bar':>9s} {'rel err':>9s}")
    for r in rows:
        e = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        print(f"{r['case']:70s} {r['impl']:12s} {r['pass']:13s} {r['ms'] * 1e3:9.2f} {e:>9s}")
    bad = [r for r in rows if r.get("rel_err", 0.0) > 1e-4]
    for r in bad:
        print(f"error: {r['impl']} {r['pass']} on {r['case']}: scores differ from the full forward by {r['rel_err']:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
