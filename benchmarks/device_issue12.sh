#!/usr/bin/env bash
# One GPU call for issue 12's open measurements, under a wall-clock budget
# (steps that no longer fit are skipped, not cut off):
#   1. A/B of the forward's register cap at small head dims (fwd_min_blocks in
#      ext/csrc/cuda/fwd_mma.cu): the tree as is, and a copy in /tmp/base with
#      the cap removed, both built in place (no pip -e: an editable finder would
#      shadow the copy), the small attention cases timed with each, twice, alternating;
#   2. the CUDA tests (attention and the whole-step decode kernel);
#   3. training tokens/s (benchmarks/train_cuda.py);
#   4. the whole-model decode step through CUDA graphs (benchmarks/decode_cuda.py);
#   5. compute-sanitizer memcheck and racecheck on the decode-step kernel.
#
#   bash benchmarks/device_issue12.sh [ab] [test] [train] [decode] [sanitize]   (default: all)
# ('ab' compares against the tree with fwd_min_blocks removed; after that change was reverted it
# compares two identical builds, a noise check)
# Results under $OUT: summary.txt, attn_ab.json, train_cuda.json, decode_cuda.json, logs.tgz.
set -uo pipefail
OUT=${OUT:-/tmp/fastrader-device}
mkdir -p "$OUT/logs"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET=${BUDGET:-565}
steps=${*:-all}
want() { [[ " $steps " == *" all "* || " $steps " == *" $1 "* ]]; }
T0=$SECONDS
summary=()
step() {  # step NAME MAX_SECONDS CMD...: runs CMD with at most MAX_SECONDS and what the budget leaves
  local name=$1 max=$2; shift 2
  local left=$((BUDGET - (SECONDS - T0) - 10))
  local t=$((max < left ? max : left))
  if [ "$t" -lt 15 ]; then summary+=("$(printf '%-18s skipped (budget)' "$name")"); return 99; fi
  local t1=$SECONDS
  timeout "$t" "$@" >"$OUT/logs/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-18s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t1))" "$(tail -1 "$OUT/logs/$name.log" | cut -c1-110)")")
  return $rc
}
finish() {
  {
    printf '%s\n' "${summary[@]}"
    echo "---- total ${SECONDS}s"
  } >"$OUT/summary.txt"
  tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
  cat "$OUT/summary.txt"
}
trap finish EXIT

# ---- builds: the tree (all extensions) and the baseline copy (_C only), in parallel
build_tree() {
  FASTRADER_BUILD=all FASTRADER_CUDA=1 MAX_JOBS=${1:-16} $PY setup.py build_ext --inplace 2>&1 |
    grep -vE "warning #|Remark: The warnings|^\s*$|bit-field" | tail -40
  $PY -c "import torch, fastrader._C, fastrader; print('built', fastrader.__file__, torch.__version__, torch.cuda.get_device_name())"
}
build_base() {
  rm -rf /tmp/base && mkdir -p /tmp/base
  tar --exclude=./build --exclude='*.so' -cf - . | tar -xf - -C /tmp/base
  sed -i 's/__launch_bounds__(NW \* 32, fwd_min_blocks<DP>())/__launch_bounds__(NW * 32)/' /tmp/base/ext/csrc/cuda/fwd_mma.cu
  grep -n "__launch_bounds__" /tmp/base/ext/csrc/cuda/fwd_mma.cu
  (cd /tmp/base && FASTRADER_BUILD=torch FASTRADER_CUDA=1 MAX_JOBS=$1 $PY setup.py build_ext --inplace 2>&1 |
    grep -vE "warning #|Remark: The warnings|^\s*$|bit-field" | tail -20)
  (cd /tmp/base && $PY -c "import fastrader._C, fastrader; print('built', fastrader.__file__)")
}
export PY
export -f build_tree build_base  # timeout runs programs: the steps call these through bash -c
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >"$OUT/logs/gpu.log" 2>&1
if want ab; then
  build_base 8 >"$OUT/logs/build_base.log" 2>&1 &
  bpid=$!
  step build 330 bash -c 'build_tree 8'
  wait $bpid
  summary+=("$(printf '%-18s %s' build_base "$(tail -1 "$OUT/logs/build_base.log" | cut -c1-110)")")
else
  step build 330 bash -c 'build_tree 16'
fi
grep -q "^built" "$OUT/logs/build.log" || exit 1

if want ab && grep -q "^built" "$OUT/logs/build_base.log"; then
  for r in 1 2; do
    (cd /tmp/base && step "attn_base$r" 90 $PY benchmarks/attention_cuda.py --small --no-flex --no-decode --json "$OUT/logs/attn_base$r.json")
    summary+=("$(printf '%-18s %s' "attn_base$r" "$(tail -1 "$OUT/logs/attn_base$r.log" | cut -c1-100)")")
    step "attn_new$r" 90 $PY benchmarks/attention_cuda.py --small --no-flex --no-decode --json "$OUT/logs/attn_new$r.json"
  done
  $PY - "$OUT" <<'EOF' >"$OUT/logs/ab_table.log" 2>&1
import json, os, statistics, sys
out = sys.argv[1]
rows = []
for variant in ("base", "new"):
    for r in (1, 2):
        p = os.path.join(out, "logs", f"attn_{variant}{r}.json")
        if os.path.exists(p):
            for row in json.load(open(p)):
                rows.append({**row, "build": variant, "run": r})
json.dump(rows, open(os.path.join(out, "attn_ab.json"), "w"), indent=1)
keys = sorted({(r["case"], r["impl"], r["pass"]) for r in rows})
print(f"{'case':34s} {'impl':10s} {'pass':8s} {'base ms (runs)':>22s} {'capped ms (runs)':>22s} {'base/capped':>11s}")
for k in keys:
    b = [r["ms"] for r in rows if (r["case"], r["impl"], r["pass"]) == k and r["build"] == "base"]
    n = [r["ms"] for r in rows if (r["case"], r["impl"], r["pass"]) == k and r["build"] == "new"]
    fb = " ".join(f"{x:.4f}" for x in b)
    fn = " ".join(f"{x:.4f}" for x in n)
    ratio = f"{statistics.median(b) / statistics.median(n):.3f}" if b and n else "-"
    print(f"{k[0]:34s} {k[1]:10s} {k[2]:8s} {fb:>22s} {fn:>22s} {ratio:>11s}")
EOF
  cat "$OUT/logs/ab_table.log"
fi

if want test; then
  step pytest_attn 200 $PY -m pytest -q -x -p no:cacheprovider tests/test_attention_cuda.py -rfE
  step pytest_step 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_decode_step.py -rfE
fi
if want train; then
  step train 240 $PY benchmarks/train_cuda.py --attention --profile fastrader,fa2-local --json "$OUT/train_cuda.json"
fi
if want decode; then
  step decode 120 $PY benchmarks/decode_cuda.py --json "$OUT/decode_cuda.json"
fi
if want sanitize; then
  step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -p no:cacheprovider \
    tests/test_cuda_decode_step.py -k "odd or nosink"
  step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 $PY -m pytest -q -p no:cacheprovider \
    tests/test_cuda_decode_step.py -k "odd"
fi
echo "---- tails"
for f in pytest_attn pytest_step memcheck racecheck; do
  [ -f "$OUT/logs/$f.log" ] && echo "== $f" && grep -E "passed|failed|FAILED|Error|ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/logs/$f.log" | tail -8
done
[ -f "$OUT/logs/train.log" ] && echo "== train" && grep -E "^  profile|attention only" "$OUT/logs/train.log" && sed -n '/^impl /,$p' "$OUT/logs/train.log"
[ -f "$OUT/logs/decode.log" ] && echo "== decode" && sed -n '/^case /,$p' "$OUT/logs/decode.log"
exit 0
