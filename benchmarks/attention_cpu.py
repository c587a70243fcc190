"""Benchmark: fastrader sparse attention vs PyTorch SDPA on the CPU.

Times, in one process and with the same thread count, forward and
forward+backward of

* ``fastrader``  -- fastrader.attention.sparse_attention (window W)
* ``sdpa-dense`` -- F.scaled_dot_product_attention(is_causal=True)
* ``sdpa-mask``  -- F.scaled_dot_product_attention with the boolean window mask

in float32, reports medians, speed-ups over sdpa-dense and achieved GFLOP/s
next to the machine's measured peak (a large float32 torch.mm), then the
fastrader-only scaling runs at 16K/32K/64K and, with --memory, the peak
resident memory of forward+backward at (1, 8, 65536, 32).

    python benchmarks/attention_cpu.py [--threads 2] [--json out.json] [--quick] [--memory]
    python benchmarks/attention_cpu.py --threads 1 --clock cpu   # busy shared machine

On a machine shared with other work, wall-clock ratios swing with the load;
single-thread CPU time (--threads 1 --clock cpu) is the steadier comparison.

FLOPs (as defined in issue #3): forward = 4*B*H*D*(keys attended); the
forward+backward column counts 3.5x that (2 GEMMs forward + 5 backward).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastrader.attention import sparse_attention, sparse_attention_mask  # noqa: E402

FWD_BWD_FLOP_FACTOR = 3.5


def keys_attended(n, window, dilation=1, sinks=0):
    """Number of (query, key) pairs, counted exactly from the mask rule."""
    if dilation == 1 and sinks == 0:  # closed form: the benchmarked cases
        w = min(window, n)
        return n * w - w * (w - 1) // 2
    mask = sparse_attention_mask(n, window, dilation, sinks)
    return int(mask.sum())


def case_name(b, h, n, d, w):
    return f"B={b},H={h},N={n},D={d},W={w}"


def time_ms(fn, reps, warmup=1):
    """(median, min) wall-clock milliseconds over reps runs after warmup."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        times.append(_once(fn))
    return statistics.median(times), min(times)


_CLOCK = time.perf_counter  # --clock cpu switches to process CPU time


def _once(fn):
    t0 = _CLOCK()
    fn()
    return (_CLOCK() - t0) * 1e3


def measure_peak_gflops(reps=10):
    """Float32 GEMM throughput of this machine with the current thread count
    (best of reps 2048^3 torch.mm: a peak, so the least disturbed run)."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = time_ms(lambda: torch.mm(a, b), reps, warmup=2)[1]
    return 2 * n**3 / (ms * 1e-3) / 1e9


def make_impls(window):
    def ours(q, k, v):
        return sparse_attention(q, k, v, window=window)

    def dense(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    masks = {}

    def masked(q, k, v):
        n = q.shape[-2]
        if n not in masks:
            masks[n] = sparse_attention_mask(n, window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=masks[n])

    return {"fastrader": ours, "sdpa-dense": dense, "sdpa-mask": masked}


def time_case(shape, window, impls, reps, slow_reps):
    """Rows (impl, pass, median ms, min ms). The implementations take turns,
    one run each per round, so that load from other processes on a shared
    machine hits them alike instead of whichever happened to run then."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(shape, generator=gen).requires_grad_() for _ in range(3)]
    grad = torch.randn(shape, generator=gen)
    rows = []
    for pss in ("fwd", "fwd+bwd"):
        runs = {}
        for name, fn in impls.items():
            if pss == "fwd":

                def run(fn=fn):
                    with torch.no_grad():
                        fn(q, k, v)

            else:

                def run(fn=fn):
                    q.grad = k.grad = v.grad = None
                    fn(q, k, v).backward(grad)

            run()  # warm-up
            runs[name] = (run, reps if name == "fastrader" else slow_reps, [])
        for rnd in range(max(r for _, r, _ in runs.values())):
            for run, r, times in runs.values():
                if rnd < r:
                    times.append(_once(run))
        for name, (_, _, times) in runs.items():
            rows.append((name, pss, statistics.median(times), min(times)))
    return rows


def check_parity(shape, window):
    """The timed op must agree with SDPA + mask on the timed shape (sanity, not a test)."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = [torch.randn(shape, generator=gen) for _ in range(3)]
    ours = sparse_attention(q, k, v, window=window)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=sparse_attention_mask(shape[2], window))
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def memory_child(n):
    """Runs in a subprocess: peak RSS growth of fwd+bwd at (1, 8, n, 32), W=256."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    shape = (1, 8, n, 32)

    def rss_kb(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
        raise RuntimeError(field)

    # warm the op up on a small shape so one-time allocations are not counted
    w = torch.randn(1, 1, 300, 32, requires_grad=True)
    sparse_attention(w, w, w, window=256).sum().backward()
    del w
    base = rss_kb("VmRSS:")
    gen = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(shape, generator=gen).requires_grad_() for _ in range(3)]
    grad = torch.randn(shape, generator=gen)
    with open("/proc/self/clear_refs", "w") as fh:  # reset the VmHWM high-water mark
        fh.write("5")
    out = sparse_attention(q, k, v, window=256)
    out.backward(grad)
    peak = rss_kb("VmHWM:")
    tensor_bytes = 8 * q.numel() * q.element_size()  # q, k, v, o, dq, dk, dv, do
    print(json.dumps({"peak_growth_bytes": (peak - base) * 1024, "tensors_bytes": tensor_bytes}))


def measure_memory(n, threads):
    env = dict(os.environ, BENCH_THREADS=str(threads))
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", str(n)],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    ap.add_argument("--reps", type=int, default=7, help="repetitions of fastrader (median)")
    ap.add_argument("--slow-reps", type=int, default=3, help="repetitions of the SDPA peers")
    ap.add_argument("--quick", action="store_true", help="skip the 16K-64K scaling runs")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory at N=65536")
    ap.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: process CPU time, robust on a busy shared machine (use with --threads 1; "
        "with more threads it sums them)",
    )
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global _CLOCK
    _CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.memory_child:
        memory_child(args.memory_child)
        return
    torch.set_num_threads(args.threads)
    window = 256
    peak = measure_peak_gflops()
    load = os.getloadavg()[0]
    print(f"threads={torch.get_num_threads()}  measured peak fp32 (torch.mm 2048^3): {peak:.1f} GFLOP/s  "
          f"load average before: {load:.2f} (other processes distort every timing)")

    rows = []

    def add(case, impl, pss, ms, min_ms, shape, **extra):
        b, h, n, d = shape
        flops = 4 * b * h * d * keys_attended(n, window)
        if pss == "fwd+bwd":
            flops *= FWD_BWD_FLOP_FACTOR
        gflops = flops / (ms * 1e-3) / 1e9 if impl == "fastrader" else None
        row = {"case": case, "impl": impl, "pass": pss, "ms": round(ms, 3), "min_ms": round(min_ms, 3),
               "threads": torch.get_num_threads(), "clock": args.clock}
        if gflops is not None:
            row.update(gflops=round(gflops, 2), gflops_best=round(gflops * ms / min_ms, 2))
        row.update(extra)
        rows.append(row)
        return row

    for shape in [(1, 8, 8192, 32), (1, 8, 2048, 8)]:
        case = case_name(*shape, window)
        err = check_parity(shape, window)
        timed = time_case(shape, window, make_impls(window), args.reps, args.slow_reps)
        dense = {p: ms for impl, p, ms, _ in timed if impl == "sdpa-dense"}
        for impl, pss, ms, min_ms in timed:
            add(case, impl, pss, ms, min_ms, shape, speedup_vs_dense=round(dense[pss] / ms, 2),
                **({"max_rel_err_vs_sdpa_mask": err} if impl == "fastrader" else {}))

    if not args.quick:
        ours = make_impls(window)
        ours = {"fastrader": ours["fastrader"]}
        for n in (16384, 32768, 65536):
            shape = (1, 8, n, 32)
            for impl, pss, ms, min_ms in time_case(shape, window, ours, max(3, args.reps // 2), 0):
                add(case_name(*shape, window), impl, pss, ms, min_ms, shape)

    peak = max(peak, measure_peak_gflops())  # again at the end: a busy machine may have calmed down
    for row in rows:
        if "gflops" in row:
            row.update(peak_gflops=round(peak, 2), pct_of_peak=round(100 * row["gflops"] / peak, 1))
    print(f"peak fp32 GEMM, best of start and end: {peak:.1f} GFLOP/s")

    if args.memory:
        mem = measure_memory(65536, args.threads)
        ratio = mem["peak_growth_bytes"] / mem["tensors_bytes"]
        rows.append({"case": case_name(1, 8, 65536, 32, window), "impl": "fastrader", "pass": "memory",
                     "ms": None, "peak_growth_mb": round(mem["peak_growth_bytes"] / 2**20, 1),
                     "tensors_mb": round(mem["tensors_bytes"] / 2**20, 1), "ratio": round(ratio, 3)})

    print(f"\n{'case':<32} {'impl':<11} {'pass':<8} {'median ms':>10} {'min ms':>10} {'x dense':>8} "
          f"{'GFLOP/s':>8} {'%peak':>6}   (GFLOP/s from the median)")
    for r in rows:
        if r["pass"] == "memory":
            continue
        sp = f"{r['speedup_vs_dense']:.1f}x" if "speedup_vs_dense" in r else ""
        gf = f"{r['gflops']:.1f}" if "gflops" in r else ""
        pct = f"{r['pct_of_peak']:.0f}" if "pct_of_peak" in r else ""
        print(f"{r['case']:<32} {r['impl']:<11} {r['pass']:<8} {r['ms']:>10.2f} {r['min_ms']:>10.2f} "
              f"{sp:>8} {gf:>8} {pct:>6}")

    scale = {(r["case"], r["pass"]): r["ms"] for r in rows if r["pass"] != "memory"}
    if not args.quick:
        print("\nscaling (time per 16K of sequence, should stay flat):")
        for pss in ("fwd", "fwd+bwd"):
            per = [scale[(case_name(1, 8, n, 32, window), pss)] / (n / 16384) for n in (16384, 32768, 65536)]
            print(f"  {pss:<8} " + "  ".join(f"N={n}: {p:.1f} ms" for n, p in zip((16384, 32768, 65536), per)))
    for r in rows:
        if r["pass"] == "memory":
            print(f"\npeak RSS growth of fwd+bwd at {r['case']}: {r['peak_growth_mb']} MiB "
                  f"= {r['ratio']:.2f}x of q,k,v,o and their grads ({r['tensors_mb']} MiB)")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
