#!/usr/bin/env bash
# gpu_check.sh: check gpurnn's cuda backend on your NVIDIA GPU (tested on an H100/H200) in
# one run of about 8 minutes that needs no network.
#
#   pip install -e ".[cuda12,test-cu12]"               # or .[cuda13,test-cu13] for a CUDA 13 driver
#   PYTHONPATH=. OUT=out bash benchmarks/gpu_check.sh  # from the repository root
#
# What it does:
# 1. environment: nvidia-smi, driver, python, numba, numba-cuda, cupy, torch versions
# 2. the whole test suite on your GPU, simulator off (GPURNN_REAL_GPU=1,
#    NUMBA_ENABLE_CUDASIM=0; multi-block persistent kernels included), TWICE, and the two
#    runs' per-test outcomes compared (a race shows up as a result that moves)
# 3. the PTX report (sm_90 PTX of every kernel, registers/smem, f64 check), in the
#    background during the test runs (CPU only)
# 4. benchmarks/bench_gpu.py: gpurnn step vs persistent vs torch.nn.LSTM cuDNN fp32/fp16
# Writes at most 8 files under $OUT (default ./gpu_check_out); attach summary.txt (and the
# logs it points to) to a bug report:
#   env.txt tests_run1.log tests_run2.log ptx_report.md bench.csv bench.md bench.log summary.txt
# T_TESTS / T_PTX / T_BENCH (seconds) bound each part.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-.}"
T_TESTS="${T_TESTS:-160}"      # seconds per test-suite run (x2)
T_PTX="${T_PTX:-240}"          # runs concurrently with the tests
T_BENCH="${T_BENCH:-140}"      # 2*160 + 140 + setup < 480 s
START=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }

# ---------------------------------------------------------------- 1. environment
{
  echo "# date: $(date -u)"
  echo "# host: $(hostname)"
  nvidia-smi || echo "nvidia-smi: not found"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
  python - <<'EOF'
import importlib, platform, sys
print("python", sys.version.replace("\n", " "), platform.platform())
for name in ("numpy", "scipy", "numba", "numba_cuda", "cupy", "torch", "pytest"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
try:
    from numba import cuda
    d = cuda.get_current_device()
    print("numba device:", d.name, "cc", d.compute_capability, "SMs", d.MULTIPROCESSOR_COUNT)
    print("driver version:", cuda.cudadrv.driver.driver.get_version())
    print("max dyn smem opt-in:", d.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
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
say "environment -> env.txt"; head -40 "$OUT/env.txt"

# ---------------------------------------------------------------- 3. PTX report (background)
( NUMBA_ENABLE_CUDASIM=0 timeout "$T_PTX" python -m gpurnn.cuda.ptx_report \
      --out "$OUT/ptx_report.md" > /dev/null 2>&1; echo $? > /tmp/gpurnn_ptx_rc ) &
PTX_PID=$!

# ---------------------------------------------------------------- 2. tests, twice
export GPURNN_REAL_GPU=1 NUMBA_ENABLE_CUDASIM=0
for run in 1 2; do
  say "test suite on the GPU, run $run (limit ${T_TESTS}s)"
  # the PTX test is the report of step 3 (same script, run once, in the background)
  timeout "$T_TESTS" python -m pytest -q -rA -p no:cacheprovider --durations=15 \
      --deselect tests/test_cuda_ptx.py::test_ptx_sm90_no_f64_in_float32_kernels tests \
      > "$OUT/tests_run$run.log" 2>&1
  echo "exit status: $?" >> "$OUT/tests_run$run.log"
  tail -5 "$OUT/tests_run$run.log"
done

wait "$PTX_PID"
PTX_RC=$(cat /tmp/gpurnn_ptx_rc 2>/dev/null || echo "?")
say "PTX report exit status $PTX_RC -> ptx_report.md"

# ---------------------------------------------------------------- 4. benchmark
say "benchmark (limit ${T_BENCH}s)"
timeout "$T_BENCH" python benchmarks/bench_gpu.py --out "$OUT" --budget-s $(( T_BENCH - 40 )) \
    > "$OUT/bench.log" 2>&1
BENCH_RC=$?
cat "$OUT/bench.log" | tail -30

# ---------------------------------------------------------------- summary
{
  echo "gpu_check summary ($(date -u)), wall $(( $(date +%s) - START )) s"
  for run in 1 2; do
    echo "run $run: $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/tests_run$run.log" | tail -1)"
    grep -E '^(PASSED|FAILED|ERROR|SKIPPED)' "$OUT/tests_run$run.log" | sort > "/tmp/gpurnn_outcomes_$run"
  done
  if diff -q /tmp/gpurnn_outcomes_1 /tmp/gpurnn_outcomes_2 > /dev/null; then
    echo "runs 1 and 2: identical per-test outcomes"
  else
    echo "runs 1 and 2 DIFFER:"; diff /tmp/gpurnn_outcomes_1 /tmp/gpurnn_outcomes_2 | head -40
  fi
  echo "PTX report exit status: $PTX_RC ($(tail -1 "$OUT/ptx_report.md" 2>/dev/null))"
  echo "benchmark exit status: $BENCH_RC"
  [ -f "$OUT/bench.md" ] && cat "$OUT/bench.md"
} > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
