#!/usr/bin/env bash
# GPU calls for issue 12's measurements, under a wall-clock budget (steps
# that no longer fit are skipped, not cut off). Steps, in this order:
#   build      the tree's extensions in place (incremental when the machine is warm)
#   fa4stage   copy .carry/fa4a/* to /tmp/fa4parts (the first part of the flash-attn-4
#              site tree, which is over one call's 64 MiB: it travels in two calls)
#   test       the CUDA tests: attention (default dispatch, then the mma.sync forward forced),
#              the whole-step decode kernel, the flash backend
#   sanitize   compute-sanitizer memcheck and racecheck on every attention kernel
#              (benchmarks/cuda_sanitize.py) and on the decode-step kernel
#   decode     the whole-model decode step through CUDA graphs (benchmarks/decode_cuda.py)
#   ncu        Nsight Compute on the small-head-dim forward (D=8 and D=32)
#   fa4        join /tmp/fa4parts with .carry/fa4b/* and unpack flash-attn-4 and its CuTe DSL
#              into /tmp/fa4site (PYTHONPATH), then the flash backend test again (FA4 path)
#   attnsmall  benchmarks/attention_cuda.py --small (head dims 8-32 and the default model; FA2-local, FA4 if imported)
#   attn       benchmarks/attention_cuda.py, every case, with FA4 when it imports
#   train      benchmarks/train_cuda.py (eager, graph, compile, compile-ro, compile-graph;
#              TRAIN_ARGS="--modes ... --impls ..." narrows it)
#   trainloop  benchmarks/train_loop_cuda.py: fastrader's own loop with and without --compile
#
#   bash benchmarks/device_issue12.sh STEP...        (build always runs)
# Results under $OUT: summary.txt, attention_cuda.json, train_cuda.json, decode_cuda.json,
# ncu_small.txt, logs.tgz.
#
# The flash-attn-4 parts are made here with (cp312 wheels, unpacked, one xz tar, split in two):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
#     nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 \
#     torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
#   (unzip each into one dir) ; tar -cf - . | xz -T2 -9e > fa4site.tar.xz ; split -b 45000000 -d ...
set -uo pipefail
OUT=${OUT:-/tmp/fastrader-device}
mkdir -p "$OUT/logs"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET=${BUDGET:-570}
steps=" $* "
want() { [[ "$steps" == *" $1 "* ]]; }
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

build_tree() {
  FASTRADER_BUILD=all FASTRADER_CUDA=1 MAX_JOBS=16 $PY setup.py build_ext --inplace 2>&1 |
    grep -vE "warning #|Remark: The warnings|^\s*$|bit-field" | tail -40
  $PY -c "import torch, fastrader._C, fastrader; print('built', fastrader.__file__, torch.__version__, torch.cuda.get_device_name())"
}
export PY
export -f build_tree  # timeout runs programs: the step calls this through bash -c
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >"$OUT/logs/gpu.log" 2>&1
if want fa4stage; then
  mkdir -p /tmp/fa4parts && cp .carry/fa4a/* /tmp/fa4parts/ && summary+=("fa4stage          $(du -sh /tmp/fa4parts | cut -f1) staged in /tmp/fa4parts")
fi
step build 330 bash -c build_tree
grep -q "^built" "$OUT/logs/build.log" || exit 1
PYT="$PY -m pytest -q -p no:cacheprovider -rfE"

if want test; then
  step pytest_attn 200 $PYT -x tests/test_attention_cuda.py
  # the mma.sync forward at D = 64/128 too (on Hopper those run the wgmma kernel by default)
  step pytest_attn_mma 150 env FASTRADER_CUDA_FWD=mma $PYT -x tests/test_attention_cuda.py -k "parity or fuzz or opcheck"
  step pytest_step 90 $PYT tests/test_cuda_decode_step.py
  step pytest_flash 90 $PYT -rs tests/test_flash_backend.py
fi
if want sanitize; then
  step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 $PY benchmarks/cuda_sanitize.py
  step racecheck 120 compute-sanitizer --tool racecheck --error-exitcode 9 $PY benchmarks/cuda_sanitize.py
  step memcheck_step 60 compute-sanitizer --tool memcheck --error-exitcode 9 $PYT tests/test_cuda_decode_step.py -k "odd or nosink"
  step racecheck_step 60 compute-sanitizer --tool racecheck --error-exitcode 9 $PYT tests/test_cuda_decode_step.py -k "odd"
fi
if want decode; then
  step decode 120 $PY benchmarks/decode_cuda.py --json "$OUT/decode_cuda.json"
fi
if want ncu; then
  step ncu 120 bash -c "for d in 8 32; do ncu --clock-control none -k regex:fwd_mma --launch-count 1 --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis \
    $PY benchmarks/cuda_profile_case.py 8 8 2048 \$d 256; done"
  cp "$OUT/logs/ncu.log" "$OUT/ncu_small.txt" 2>/dev/null
fi
if want fa4; then
  if ls /tmp/fa4parts/fa4part.00 >/dev/null 2>&1; then
    rm -rf /tmp/fa4site && mkdir -p /tmp/fa4site &&
      cat /tmp/fa4parts/fa4part.00 .carry/fa4b/fa4part.01 | xz -dc | tar -xf - -C /tmp/fa4site &&
      export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
    step fa4_import 120 $PY -c "from flash_attn.cute import flash_attn_func; import cutlass; print('fa4 imports', cutlass.__file__)"
    step pytest_flash_fa4 150 $PYT -rs tests/test_flash_backend.py
  else
    summary+=("fa4               skipped: /tmp/fa4parts is gone (a fresh machine): FA4 not installed")
  fi
fi
if want attnsmall; then
  step attnsmall 150 $PY benchmarks/attention_cuda.py --small --no-flex --no-decode --json "$OUT/attention_small.json"
fi
if want attn; then
  step attn 330 $PY benchmarks/attention_cuda.py ${ATTN_ARGS:-} --json "$OUT/attention_cuda.json"
fi
if want train; then
  step train 330 $PY benchmarks/train_cuda.py ${TRAIN_ARGS:-} --attention --json "$OUT/train_cuda.json"
fi
if want trainloop; then
  step trainloop 200 $PY benchmarks/train_loop_cuda.py --json "$OUT/train_loop_cuda.json"
fi
echo "---- tails"
for f in pytest_attn pytest_attn_mma pytest_step pytest_flash pytest_flash_fa4 memcheck racecheck memcheck_step racecheck_step fa4_import; do
  [ -f "$OUT/logs/$f.log" ] && echo "== $f" && grep -E "passed|failed|FAILED|SKIPPED|Error|ERROR SUMMARY|RACECHECK SUMMARY|imports|ok" "$OUT/logs/$f.log" | tail -8
done
[ -f "$OUT/logs/attnsmall.log" ] && echo "== attnsmall" && sed -n '/^case /,$p' "$OUT/logs/attnsmall.log"
[ -f "$OUT/logs/attn.log" ] && echo "== attn" && sed -n '/^case /,$p' "$OUT/logs/attn.log"
[ -f "$OUT/logs/trainloop.log" ] && echo "== trainloop" && cat "$OUT/logs/trainloop.log"
[ -f "$OUT/logs/train.log" ] && echo "== train" && grep -E "attention only" "$OUT/logs/train.log" && sed -n '/^impl /,$p' "$OUT/logs/train.log"
[ -f "$OUT/logs/decode.log" ] && echo "== decode" && sed -n '/^case /,$p' "$OUT/logs/decode.log"
[ -f "$OUT/logs/ncu.log" ] && echo "== ncu" && grep -E "Duration|Registers|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Block Limit|Issued Ipc" "$OUT/logs/ncu.log"
exit 0
