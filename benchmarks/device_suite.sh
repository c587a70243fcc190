#!/usr/bin/env bash
# One call on a GPU machine: build with CUDA, run the whole test suite there
# (Python 3.12 + CUDA torch), the CUDA kernels' checks, a GPU backtest, and the
# CUDA attention benchmark. Prints a short table last.
#
# Usage (from the repo root, on the GPU box):
#   bash benchmarks/device_suite.sh            # results under $OUT (default /tmp/fastrader-device)
# Wheels that the box lacks (backtrader, ccxt, quantstats, ...) are installed
# from .carry/wheels when that folder exists (no network there).
set -uo pipefail
OUT=${OUT:-/tmp/fastrader-device}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PY:-python3}
summary=()
step() { local name=$1; shift; local t0=$SECONDS; "$@" >"$OUT/$name.log" 2>&1; local rc=$?; summary+=("$(printf '%-22s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$(tail -1 "$OUT/$name.log" | cut -c1-90)")"); return $rc; }

if [ -d .carry/wheels ]; then
  step wheels $PY -m pip install -q --no-index --no-deps .carry/wheels/*.whl
fi
step build $PY -m pip install -q --no-build-isolation --no-deps -e .
step versions $PY -c "import sys, torch, numpy, pandas, fastrader._C; print(sys.version.split()[0], torch.__version__, torch.version.cuda, numpy.__version__, pandas.__version__, torch.cuda.get_device_name())"

# A C++ error raised by the CUDA op must surface as a Python exception, not a crash.
step cuda_error_probe $PY - <<'EOF'
import subprocess, sys
code = """
import torch, fastrader._C
dev = sys.argv[1]
q = torch.randn(1, 1, 8, 16, device=dev)
try:
    torch.ops.fastrader.sparse_attn_fwd(q, q, q, 0, 1, 0, 0.25)
except RuntimeError as e:
    print(dev, 'raised RuntimeError:', str(e).splitlines()[0][:80])
"""
for dev in ("cpu", "cuda"):
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code, dev], capture_output=True, text=True)
    print(dev, "exit", r.returncode, r.stdout.strip()[-120:], r.stderr.strip()[-200:])
EOF

step pytest $PY -m pytest -q -p no:cacheprovider tests
step run_cuda $PY -m fastrader.run --device cuda --out "$OUT/run_cuda" --no-progress
step run_cpu $PY -m fastrader.run --device cpu --out "$OUT/run_cpu" --no-progress --no-tearsheet
if [ -f benchmarks/attention_cuda.py ]; then
  step bench_cuda $PY benchmarks/attention_cuda.py --json "$OUT/attention_cuda.json"
fi

echo "---- logs: $OUT"
tail -5 "$OUT/cuda_error_probe.log"
grep -E "passed|failed" "$OUT/pytest.log" | tail -3
tail -25 "$OUT/bench_cuda.log" 2>/dev/null
printf '%s\n' "${summary[@]}"
