#!/usr/bin/env bash
# gpu_check.sh: check gpurnn's cuda backend on an NVIDIA GPU (made for the lent H200: 132
# SMs, CUDA 13 image with numba, numba-cuda, cupy, torch, pytest preinstalled, no registry)
# in one run of about 6-7 minutes, well inside 8, that needs no network.
#
#   OUT=out bash benchmarks/gpu_check.sh          # from the repository root
#
# Steps (each bounded by timeout; results streamed, so a killed step keeps what it had):
#   1. env.txt       environment first: GPU, driver, python, numba / numba-cuda (and
#                    whether it matches our pin), cupy, torch, cuDNN, tools on PATH
#   2. smoke.txt     20 s strict smoke run (GPURNN_STRICT=1: any fallback raises), LSTM
#                    forward + backward, the plans printed
#   3. tests.log     the CUDA, torch-bridge and parity tests on the real GPU (pytest -v,
#                    streamed), then the multi-block (cooperative grid) tests a second time
#   4. sanitizer.txt compute-sanitizer racecheck and synccheck on a tiny grid case
#   5. ncu.txt       Nsight Compute on the persistent kernels at T=64, as text
#   6. bench.csv, bench.md   benchmarks/bench_gpu.py: forward and backward checked against
#                    torch first, then timed against cuDNN fp32, TF32, fp16
#   7. summary.txt   one screen: what passed, the plans, the table
# At most 8 files under $OUT (16 MiB each at most; logs are trimmed).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_ENABLE_CUDASIM=0 GPURNN_REAL_GPU=1
PY="${PYTHON:-python3}"
T_SMOKE="${T_SMOKE:-20}"; T_TESTS="${T_TESTS:-130}"; T_TESTS2="${T_TESTS2:-45}"
T_SAN="${T_SAN:-35}"; T_NCU="${T_NCU:-50}"; T_BENCH="${T_BENCH:-120}"
START=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
trim() { [ -f "$1" ] && [ "$(stat -c %s "$1")" -gt 16000000 ] && truncate -s 16000000 "$1"; true; }

# ---------------------------------------------------------------- 1. environment
{
  echo "# date: $(date -u)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 || echo "nvidia-smi: not found"
  for t in ncu compute-sanitizer nvcc ptxas nvdisasm cuobjdump; do
    printf '%s: %s\n' "$t" "$(command -v $t || echo missing)"; done
  "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("numpy", "numba", "numba_cuda", "cupy", "torch", "pytest"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
try:
    from importlib.metadata import version
    v = version("numba-cuda")
    pin = ">=0.30,<0.31"
    ok = v.startswith("0.30.")
    print(f"numba-cuda {v}: {'matches' if ok else 'DIFFERS FROM'} our pin {pin}")
except Exception as exc:
    print("numba-cuda version: ?", exc)
try:
    from numba import cuda
    d = cuda.get_current_device()
    print("device:", d.name, "cc", d.compute_capability, "SMs", d.MULTIPROCESSOR_COUNT,
          "smem opt-in", d.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    print("driver:", cuda.cudadrv.driver.driver.get_version())
except Exception as exc:
    print("numba cuda device: ERROR", exc)
try:
    import torch
    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")
except Exception as exc:
    print("torch: ERROR", exc)
EOF
} > "$OUT/env.txt" 2>&1
say "environment -> env.txt"; cat "$OUT/env.txt"

# ---------------------------------------------------------------- 2. strict smoke run
GPURNN_STRICT=1 timeout "$T_SMOKE" "$PY" - > "$OUT/smoke.txt" 2>&1 <<'EOF'
import time
import numpy as np
import gpurnn
from gpurnn.cuda import CudaBackend
t0 = time.time()
rng = np.random.default_rng(0)
for H in (768,):     # the > 48 KB opt-in case; one config: JIT of 2 kernels fits 20 s
    m = gpurnn.LSTM(H, H, backend=CudaBackend(algo="auto"), seed=0)
    x = rng.standard_normal((8, 16, H)).astype(np.float32)
    out, _ = m(x)
    m.backward(rng.standard_normal(out.shape).astype(np.float32))
    print(f"H={H} forward plan:", m.last_plans["forward"][0][0])
    print(f"H={H} backward plan:", m.last_plans["backward"][0][0])
print(f"smoke OK in {time.time() - t0:.1f} s")
EOF
echo "exit status: $?" >> "$OUT/smoke.txt"
say "strict smoke run -> smoke.txt"; cat "$OUT/smoke.txt"

# ---------------------------------------------------------------- 3. tests on the GPU
TESTS="tests/test_cuda_backend.py tests/test_cuda_stream.py tests/test_torch_bridge.py tests/test_torch_parity.py"
say "CUDA / bridge / parity tests (limit ${T_TESTS}s), streamed"
{ timeout "$T_TESTS" "$PY" -m pytest -v -p no:cacheprovider -rfEs --durations=10 $TESTS 2>&1
  echo "exit status run 1: $?"
  echo "=== multi-block (cooperative grid) tests again: a race shows up as a moving result"
  timeout "$T_TESTS2" "$PY" -m pytest -v -p no:cacheprovider -rfE \
      -k "multiblock or cooperative or h768 or auto_default" tests/test_cuda_backend.py 2>&1
  echo "exit status run 2: $?"; } > "$OUT/tests.log"
trim "$OUT/tests.log"
grep -E "passed|failed|exit status" "$OUT/tests.log" | tail -6

# ---------------------------------------------------------------- 4. compute-sanitizer
cat > /tmp/gpurnn_tiny_grid.py <<'EOF'
import numpy as np
import gpurnn
from gpurnn.cuda import CudaBackend
be = CudaBackend(algo="persistent", units_per_block=4, split_k=4)   # 4 blocks, grid sync
m = gpurnn.LSTM(8, 16, backend=be, seed=0)
x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
out, _ = m(x)
m.backward(np.ones_like(out))
print(m.last_plans["forward"][0][0]["algorithm"], m.last_plans["backward"][0][0]["algorithm"])
EOF
{ for tool in racecheck synccheck; do
    echo "=== compute-sanitizer --tool $tool"
    if command -v compute-sanitizer > /dev/null; then
      timeout "$T_SAN" compute-sanitizer --tool "$tool" --print-limit 20 "$PY" /tmp/gpurnn_tiny_grid.py 2>&1 | tail -40
      echo "exit status: ${PIPESTATUS[0]}"
    else echo "compute-sanitizer not found"; fi
  done; } > "$OUT/sanitizer.txt"
say "sanitizer -> sanitizer.txt"; grep -E "ERROR SUMMARY|exit status|not found" "$OUT/sanitizer.txt"

# ---------------------------------------------------------------- 5. ncu, persistent kernels
cat > /tmp/gpurnn_ncu.py <<'EOF'
import numpy as np
import gpurnn
from gpurnn.cuda import CudaBackend
m = gpurnn.LSTM(768, 768, backend=CudaBackend(algo="persistent"), seed=0)
x = np.random.default_rng(0).standard_normal((64, 16, 768)).astype(np.float32)
out, _ = m(x)
m.backward(np.ones_like(out))
EOF
if command -v ncu > /dev/null; then
  timeout "$T_NCU" ncu --clock-control none --kernel-name regex:"persist" --launch-count 2 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
      --section LaunchStats --section Occupancy "$PY" /tmp/gpurnn_ncu.py > "$OUT/ncu.txt" 2>&1
  echo "exit status: $?" >> "$OUT/ncu.txt"
else
  echo "ncu not found" > "$OUT/ncu.txt"
fi
trim "$OUT/ncu.txt"
say "ncu -> ncu.txt"; grep -E "Duration|Throughput|exit status|not found" "$OUT/ncu.txt" | head -12

# ---------------------------------------------------------------- 6. benchmark
say "benchmark (limit ${T_BENCH}s): checked against torch, then timed"
timeout "$T_BENCH" "$PY" benchmarks/bench_gpu.py --out "$OUT" --budget-s $(( T_BENCH - 30 )) \
    > /tmp/gpurnn_bench.log 2>&1
BENCH_RC=$?
tail -25 /tmp/gpurnn_bench.log

# ---------------------------------------------------------------- 7. summary
{
  echo "gpu_check summary ($(date -u)), wall $(( $(date +%s) - START )) s"
  grep -E "^(name|NVIDIA)|DIFFERS|matches|device:" "$OUT/env.txt" | head -5
  grep -E "plan|smoke OK|Error|exit status" "$OUT/smoke.txt" | head -8
  grep -E "^=+ .*(passed|failed)|exit status" "$OUT/tests.log"
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
  grep -E "ERROR SUMMARY|exit status" "$OUT/sanitizer.txt"
  echo "benchmark exit status: $BENCH_RC"; tail -8 /tmp/gpurnn_bench.log
  [ -f "$OUT/bench.md" ] && cat "$OUT/bench.md"
} > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
