"""What the benchmarks say about the machine they ran on: the CPU's fp32 peak (so a time can
be read as a fraction of what the cores could do), the BLAS kernels that ran, and a spinning
process that keeps one core busy (a machine shared with other work, as users' machines are).

The peak is cores x FMA units x SIMD lanes x 2 (an FMA is two FLOPs) x clock, with the lanes
from /proc/cpuinfo's flags (avx512f: 16 fp32 lanes, avx2: 8, else SSE's 4) and 2 FMA units
per core ASSUMED (true of recent Intel server and AMD Zen 4 cores; some parts have one, which
halves the peak). The clock is lscpu's "CPU max MHz" where it reports one (turbo, not
sustained all-core AVX-512 clocks), else /proc/cpuinfo's "cpu MHz" (what a VM reports)."""
import contextlib
import os
import subprocess
import sys
import time

FMA_UNITS = 2            # per core: an assumption, stated in every header that uses it
SIMD_LANES = (("avx512f", 16), ("avx2", 8))   # fp32 lanes of the widest FMA the flags allow


def fp32_peak_gflops(cores, fma_units, lanes, mhz):
    """Peak fp32 GFLOP/s: cores x FMA units x SIMD lanes x 2 FLOPs per FMA x clock."""
    return cores * fma_units * lanes * 2 * mhz / 1e3


def simd_lanes(flags):
    """fp32 lanes of the widest vector FMA in ``flags`` (a set of /proc/cpuinfo flags)."""
    return next((lanes for flag, lanes in SIMD_LANES if flag in flags), 4)


def _lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def _cpuinfo():
    """The first processor's /proc/cpuinfo fields ({} where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def cpu_figures():
    """Model name, physical cores, lanes, clock and the fp32 peak they give (dict)."""
    lscpu, cpuinfo = _lscpu(), _cpuinfo()
    try:   # physical cores: hyperthreads share a core's FMA units
        cores = int(lscpu["Core(s) per socket"]) * int(lscpu["Socket(s)"])
    except (KeyError, ValueError):
        cores = os.cpu_count()
    lanes = simd_lanes(set(cpuinfo.get("flags", lscpu.get("Flags", "")).split()))
    if lscpu.get("CPU max MHz"):
        mhz, clock_source = float(lscpu["CPU max MHz"]), 'lscpu "CPU max MHz"'
    else:
        mhz, clock_source = float(cpuinfo.get("cpu MHz", "nan")), '/proc/cpuinfo "cpu MHz"'
    return dict(model=lscpu.get("Model name", cpuinfo.get("model name", "unknown CPU")),
                cores=cores, fma_units=FMA_UNITS, lanes=lanes, mhz=mhz, clock_source=clock_source,
                peak_gflops=fp32_peak_gflops(cores, FMA_UNITS, lanes, mhz))


def anchored_peak(fig, ceiling_gflops):
    """``fig`` (cpu_figures) with the measured GEMM ceiling (gemm_ceiling_gflops) as its peak
    where that is higher. A GEMM cannot beat the true peak, so a higher ceiling means the
    clock behind the nominal peak is below the one the cores ran at (an EPYC Zen 5 VM reports
    2596 MHz, 332 GFLOP/s, and a 2048^3 GEMM ran 417: 3.26 GHz x 128 FLOP per cycle), and
    fractions of the nominal peak would pass 100%."""
    fig = dict(fig, ceiling_gflops=ceiling_gflops)
    if ceiling_gflops is not None and ceiling_gflops > fig["peak_gflops"]:
        fig.update(nominal_peak_gflops=fig["peak_gflops"], peak_gflops=ceiling_gflops)
    return fig


def describe_peak(fig):
    """One line: the peak and every figure (and assumption) behind it."""
    nominal = (f"{fig['cores']} cores x {fig['fma_units']} FMA units (assumed) x {fig['lanes']} "
               f"lanes x 2 x {fig['mhz']:.0f} MHz ({fig['clock_source']})")
    if "nominal_peak_gflops" in fig:
        return (f"{fig['model']}; fp32 peak {fig['peak_gflops']:.0f} GFLOP/s, the measured GEMM "
                f"ceiling (machine.gemm_ceiling_gflops), above the nominal "
                f"{fig['nominal_peak_gflops']:.0f} = {nominal}: the cores ran above that clock")
    return f"{fig['model']}; fp32 peak {fig['peak_gflops']:.0f} GFLOP/s = {nominal}"


def gemm_ceiling_gflops(n=2048, repeats=5):
    """What one large float32 GEMM achieves here (NumPy's BLAS, its default threads, best
    of ``repeats`` n x n x n products, GFLOP/s): the practical ceiling a recurrent layer's
    products can approach, measured, beside the nominal peak (whose clock a VM may
    misreport: on an EPYC Zen 5 one thread ran 195 GFLOP/s where 2596 MHz x 64 allows 166)."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, a, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def openblas_architecture():
    """The kernels OpenBLAS chose (threadpoolctl's "architecture", e.g. SkylakeX or Haswell;
    OPENBLAS_CORETYPE overrides the detection) of every OpenBLAS loaded, or a reason."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    archs = sorted({f"{i.get('architecture')} ({i.get('prefix')} {i.get('version')})"
                    for i in threadpool_info() if i.get("internal_api") == "openblas"})
    forced = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    note = f"; forced by {forced}" if forced else ""
    return (", ".join(archs) or "no OpenBLAS loaded") + note


@contextlib.contextmanager
def busy_core():
    """Keep one core busy with a pure-Python spin loop (a separate process) for the block:
    started before it, killed after it, even when the block raises or is interrupted."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)          # past its interpreter start-up: spinning before we measure
        if spinner.poll() is not None:
            raise RuntimeError(f"the busy-core spinner exited ({spinner.returncode})")
        yield spinner.pid
    finally:
        spinner.kill()
        spinner.wait()
