#!/usr/bin/env bash
# One GPU call for the CUDA attention work: build the extension in place,
# run the CUDA attention tests, compute-sanitizer on small runs of every
# kernel, and the attention benchmark. Logs and JSON under $OUT.
#
#   bash benchmarks/device_attention.sh [all|test|quick|sanitize|bench|benchnoflex|bencheager|benchsplit]...
# (the build always runs; 'all' = test sanitize bench)
set -uo pipefail
OUT=${OUT:-/tmp/fastrader-device}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PY:-python3}
steps=${*:-all}
summary=()
step() { local name=$1; shift; local t0=$SECONDS; "$@" >"$OUT/$name.log" 2>&1; local rc=$?; summary+=("$(printf '%-16s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$(tail -1 "$OUT/$name.log" | cut -c1-100)")"); return $rc; }
want() { [[ " $steps " == *" all "* || " $steps " == *" $1 "* ]]; }

build() {
  FASTRADER_BUILD=torch FASTRADER_CUDA=1 $PY setup.py build_ext --inplace 2>&1 | grep -vE "warning #3306|Remark: The warnings|^\s*$|bit-field" | tail -60
  $PY -c "import torch, fastrader._C; print('built', torch.__version__, torch.cuda.get_device_name())"
}
step build build
if ! grep -q "^built" "$OUT/build.log"; then
  # Another helper's C++ file may be mid-edit; build without it rather than lose the call.
  for f in ext/csrc/cpu/decode_cpu.cpp; do [ -f "$f" ] && mv "$f" "$f.skip" && echo "moved aside $f" >>"$OUT/build.log"; done
  step build2 build
fi
if want test || want quick; then
  args=(tests/test_attention_cuda.py)
  want quick && args+=(-k "fuzz or decode or opcheck or can_run")
  step pytest $PY -m pytest -q --maxfail=30 -p no:cacheprovider "${args[@]}" -rfE
fi
if want sanitize; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 9 $PY benchmarks/cuda_sanitize.py
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 9 $PY benchmarks/cuda_sanitize.py
fi
if want bencheager; then  # what a Python training loop sees (launch and autograd overhead included)
  step bencheager $PY benchmarks/attention_cuda.py --eager --no-flex --json "$OUT/attention_cuda_eager.json"
fi
if want benchsplit; then  # the backward with a separate dQ kernel, for ext/NOTES.md
  step benchsplit env FASTRADER_CUDA_BWD=split $PY benchmarks/attention_cuda.py --no-flex --json "$OUT/attention_cuda_split.json"
fi
if want benchfused; then  # the fused-dQ backward, forced
  step benchfused env FASTRADER_CUDA_BWD=fused $PY benchmarks/attention_cuda.py --no-flex --json "$OUT/attention_cuda_fused.json"
fi
if want bench; then
  step bench $PY benchmarks/attention_cuda.py --json "$OUT/attention_cuda.json"
elif want benchnoflex; then
  step bench $PY benchmarks/attention_cuda.py --no-flex --json "$OUT/attention_cuda.json"
fi
echo "---- logs: $OUT"
grep -E "error|Error" "$OUT/build.log" | head -20
grep -E "passed|failed|FAILED|Error" "$OUT/pytest.log" 2>/dev/null | tail -15
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|hazard" "$OUT/memcheck.log" "$OUT/racecheck.log" 2>/dev/null | head -10
for b in bench bencheager benchsplit benchfused; do [ -f "$OUT/$b.log" ] && echo "== $b" && sed -n '/^case /,$p' "$OUT/$b.log" | grep -v "note: f[al].*: \(not installed\|skipped\)"; done
printf '%s\n' "${summary[@]}"
