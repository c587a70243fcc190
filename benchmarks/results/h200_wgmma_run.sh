#!/usr/bin/env bash
# One budgeted GPU call for the wgmma forward (ext/NOTES.md v6): build, a quick
# parity probe, the A/B timing, the CUDA attention tests, compute-sanitizer.
#   bash benchmarks/results/h200_wgmma_run.sh [probe] [bench] [test] [sanitize]   (default: all)
# Results under $OUT: summary.txt, wgmma_ab.json, logs.tgz.
set -uo pipefail
OUT=${OUT:-/tmp/fastrader-device}
mkdir -p "$OUT/logs"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts outside the root (/tmp/probe.py) import this checkout
BUDGET=${BUDGET:-560}
steps=${*:-all}
want() { [[ " $steps " == *" all "* || " $steps " == *" $1 "* ]]; }
T0=$SECONDS
summary=()
step() {  # step NAME MAX_SECONDS CMD...
  local name=$1 max=$2; shift 2
  local left=$((BUDGET - (SECONDS - T0) - 8))
  local t=$((max < left ? max : left))
  if [ "$t" -lt 10 ]; then summary+=("$(printf '%-12s skipped (budget)' "$name")"); return 99; fi
  local t1=$SECONDS
  timeout -s KILL "$t" "$@" >"$OUT/logs/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t1))" "$(tail -1 "$OUT/logs/$name.log" | cut -c1-120)")")
  return $rc
}
finish() {
  { printf '%s\n' "${summary[@]}"; echo "---- total ${SECONDS}s"; } >"$OUT/summary.txt"
  tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
  echo "==== summary"; cat "$OUT/summary.txt"
}
trap finish EXIT

nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >"$OUT/logs/gpu.log" 2>&1
build() {
  FASTRADER_BUILD=torch FASTRADER_CUDA=1 MAX_JOBS=16 $PY setup.py build_ext --inplace 2>&1 |
    grep -vE "warning #|Remark: The warnings|^\s*$|bit-field|C7515|C7512" | tail -30
  $PY -c "import torch, fastrader._C; print('built', torch.__version__, torch.cuda.get_device_name())"
}
export PY
export -f build
step build 330 bash -c build
grep -q "^built" "$OUT/logs/build.log" || { tail -30 "$OUT/logs/build.log"; exit 1; }
grep -E "ptxas|C75" "$OUT/logs/build.log" | head -5

if want probe; then
  cat >/tmp/probe.py <<'PYEOF'
import os, math, torch, fastrader._C
ops = torch.ops.fastrader
torch.manual_seed(0)
for (b, h, n, d, w, s) in ((1, 2, 70, 64, 9, 0), (2, 2, 1000, 64, 300, 0), (1, 2, 777, 128, 200, 0), (1, 2, 900, 64, 256, 70)):
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    res = {}
    for mode in ("mma", "wgmma"):
        os.environ["FASTRADER_CUDA_FWD"] = mode
        res[mode] = ops.sparse_attn_fwd(q, k, v, w, 1, s, 1 / math.sqrt(d))
        torch.cuda.synchronize()
    do = (res["mma"][0].float() - res["wgmma"][0].float()).abs().max().item()
    dl = (res["mma"][1] - res["wgmma"][1]).abs().max().item()
    print(f"probe b={b} h={h} n={n} d={d} w={w} s={s}: max|out diff| {do:.3g}  max|lse diff| {dl:.3g}", flush=True)
PYEOF
  step probe 60 $PY /tmp/probe.py
  prc=$?
  tail -8 "$OUT/logs/probe.log"
  [ "$prc" -eq 0 ] || { echo "probe failed (rc=$prc): stopping"; exit 1; }
fi
if want bench; then
  step bench 150 $PY benchmarks/results/h200_wgmma_bench.py --json "$OUT/wgmma_ab.json" ${BENCH_ARGS:-}
fi
if want test; then
  step pytest 200 $PY -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_attention_cuda.py -rfE
fi
if want sanitize; then
  step memcheck 70 compute-sanitizer --tool memcheck --error-exitcode 9 $PY benchmarks/cuda_sanitize.py
  step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 9 $PY benchmarks/cuda_sanitize.py
fi
echo "---- tails"
for f in pytest memcheck racecheck; do
  [ -f "$OUT/logs/$f.log" ] && echo "== $f" && grep -E "passed|failed|FAILED|Error|error|ERROR SUMMARY|RACECHECK SUMMARY|Hazard" "$OUT/logs/$f.log" | head -12
done
[ -f "$OUT/logs/bench.log" ] && echo "== bench" && sed -n '/^case /,$p' "$OUT/logs/bench.log"
exit 0
