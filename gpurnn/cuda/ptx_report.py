"""PTX report: compile every CUDA kernel of gpurnn for sm_90 with no GPU, check and size it.

What it does: for every kernel version (fwd/bwd step, fwd/bwd persistent single-block and
grid, gemm) x every registered cell (gpurnn.cells.names(); the kernels are generated from
each cell's spec) x float32/float64, ``cuda.compile_ptx(..., cc=(9, 0))``; asserts
that no float32 kernel contains a float64 instruction (``.f64``); reports registers,
spills and shared memory per kernel from ``ptxas -v`` when a ptxas is found (the
nvidia-cuda-nvcc wheel or PATH), else the PTX-declared register counts (``.reg``).

Run (own process; the simulator must be OFF, no GPU needed):
    NUMBA_ENABLE_CUDASIM=0 python -m gpurnn.cuda.ptx_report [--out report.md] [--ptx-dir DIR]
                                                            [--cells lstm,gru]
Kernel names: fwd_step_lstm_float32, fwd_persist_grid_lstm_float32 (persistent forward
with kernels.REPORT_FWD: RB = 4, JB = persist_jb(G)), bwd_persist_1block_gru_float64,
gemm_float32, ...
Exit status 0 when every float32 kernel is free of .f64, 1 otherwise; 3 when numba-cuda's
CUDA extra (NVVM) is missing. Tested by tests/test_cuda_ptx.py.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CC = (9, 0)


def _patch_device():
    """Kernels calling device functions ask for the current device's compute capability;
    there is no device here, so report sm_90 (this script only)."""
    import numba.cuda.dispatcher as disp

    class _Dev:
        compute_capability = CC
        id = 0
        name = b"sm_90 (ptx_report)"

    disp.get_current_device = lambda: _Dev()


def _signature(kind, dtype):
    from numba import boolean, float32, float64, int32, int64, void
    f = (float32 if dtype == "float32" else float64)[::1]
    i = int64
    lens = int32[::1]
    if kind == "fwd_step":        # (t, T, B, H, gx, wt, bhh, lens, st, act, out)
        return void(i, i, i, i, f, f, f, lens, f, f, f)
    if kind == "fwd_persist":     # (T, B, H, KT, WS, VS, gx, w, bhh, lens, st, act, out)
        return void(i, i, i, i, i, i, f, f, f, lens, f, f, f)
    if kind == "bwd_step":        # (t, T, B, H, trunc, dgh, dgx, w, lens, st, act, dout, dsc, dsn, ds0)
        return void(i, i, i, i, i, f, f, f, lens, f, f, f, f, f, f)
    if kind == "bwd_persist":     # (T, B, H, KT, WS, VS, trunc, tph, dgh, dgx, wt, lens, st, act, dout, dsn, ds0)
        return void(i, i, i, i, i, i, i, i, f, f, f, lens, f, f, f, f, f)
    if kind == "gemm":
        return void(i, i, i, f, i, i, f, i, i, f, f, boolean)
    raise ValueError(kind)


def _ptxas():
    try:
        import nvidia.cuda_nvcc as m
        for base in m.__path__:
            p = os.path.join(base, "bin", "ptxas")
            if os.path.exists(p):
                return p
    except ImportError:
        pass
    return shutil.which("ptxas")


def _ptxas_info(ptxas, ptx, extra=()):
    """(registers, spill bytes, static smem bytes) from ptxas -v, or None."""
    ok, text = ptxas_compile(ptxas, ptx, extra)
    info = parse_ptxas(text) if ok else None
    return None if info is None else (info[0], info[1], info[3])


def ptxas_extra(kind):
    """ptxas options a kernel is built with: the persistent kernels' register cap."""
    from . import kernels as K
    return (f"-maxrregcount={K.PERSIST_MAX_REGISTERS}",) if "persist" in kind else ()


def compile_all(cells=None, dtypes=("float32", "float64"), lineinfo=False):
    """Yield (name, kind, dtype, ptx) for every kernel (kernels.all_kernels), compiled
    for sm_90 with cuda.compile_ptx: the one compile path of the PTX and SASS reports.
    Call _patch_device() first (no GPU)."""
    from numba import cuda
    from . import kernels as K
    for name, kern, kind, dtype in K.all_kernels(cells, dtypes):
        ptx, _ = cuda.compile_ptx(kern.py_func, _signature(kind, dtype), cc=CC,
                                  **({"lineinfo": True} if lineinfo else {}))
        yield name, kind, dtype, ptx


def ptxas_compile(ptxas, ptx, extra=(), cubin=None):
    """Assemble ``ptx`` for sm_90 (relocatable, -v); returns (ok, ptxas log text) and
    writes the cubin to ``cubin`` when given."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        out = cubin or os.path.join(d, "k.cubin")
        try:
            # -c: relocatable (grid sync calls into cudadevrt, linked at load time)
            r = subprocess.run([ptxas, f"-arch=sm_{CC[0]}{CC[1]}", "-c", "-v", *extra, src,
                                "-o", out], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, str(exc)
    return r.returncode == 0, r.stdout + r.stderr


def parse_ptxas(text):
    """(registers, spill bytes, stack bytes, static smem bytes) from a ptxas -v log."""
    regs = re.findall(r"Used (\d+) registers", text)
    smem = re.findall(r"(\d+) bytes smem", text)
    spill = re.findall(r"(\d+) bytes spill stores", text)
    stack = re.findall(r"(\d+) bytes stack frame", text)
    if not regs:
        return None
    return (int(regs[-1]), int(spill[-1]) if spill else 0, int(stack[-1]) if stack else 0,
            int(smem[-1]) if smem else None)


def _declared(ptx):
    """Registers declared in the PTX (virtual; an upper bound before ptxas allocation)
    and static shared bytes."""
    regs = sum(int(n) for n in re.findall(r"\.reg\s+\.\w+\s+%\w+<(\d+)>", ptx))
    smem = 0
    for m in re.finditer(r"\.shared\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]", ptx):
        smem += int(m.group(1))
    return regs, smem


def f64_lines(ptx):
    return [ln.strip() for ln in ptx.splitlines() if ".f64" in ln]


def compiler_unavailable(tool):
    """0 when sm_90 code can be compiled here; else prints why and returns the exit code
    (2: the simulator is on; 3: numba-cuda's CUDA extra (NVVM) is missing, a skip)."""
    from numba import config
    if config.ENABLE_CUDASIM:
        print(f"{tool}: run with NUMBA_ENABLE_CUDASIM=0 (the simulator compiles nothing)")
        return 2
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as exc:   # CUDA extra (NVVM) missing
        print(f"{tool}: SKIP numba-cuda's CUDA extra (NVVM) is missing ({exc})")
        return 3
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the Markdown table here")
    ap.add_argument("--ptx-dir", help="write each kernel's PTX here")
    ap.add_argument("--cells", help="comma-separated cell names (default: every registered cell)")
    args = ap.parse_args(argv)

    code = compiler_unavailable("ptx_report")
    if code:
        return code
    _patch_device()

    ptxas = _ptxas()
    rows, bad = [], []
    for name, kind, dtype, ptx in compile_all(args.cells.split(",") if args.cells else None,
                                              lineinfo=os.environ.get("GPURNN_LINEINFO") == "1"):
        if args.ptx_dir:
            os.makedirs(args.ptx_dir, exist_ok=True)
            with open(os.path.join(args.ptx_dir, name + ".ptx"), "w") as fh:
                fh.write(ptx)
        f64 = f64_lines(ptx)
        if dtype == "float32" and f64:
            bad.append((name, f64[:5]))
        # persistent kernels are built with max_registers (kernels.PERSIST_MAX_REGISTERS)
        extra = ptxas_extra(kind)
        info = _ptxas_info(ptxas, ptx, extra) if ptxas else None
        dregs, dsmem = _declared(ptx)
        dyn = "G*J*H*itemsize (dynamic)" if "persist" in kind else "0"
        if info:
            smem = info[2] if info[2] is not None else dsmem
            rows.append((name, str(info[0]), str(info[1]), str(smem), dyn, len(f64)))
        else:
            rows.append((name, f"{dregs} (PTX-declared)", "?", str(dsmem), dyn, len(f64)))

    src = f"ptxas -v ({ptxas})" if ptxas else "PTX .reg declarations (no ptxas found)"
    lines = [f"# gpurnn CUDA kernels, sm_{CC[0]}{CC[1]} (registers from {src})", "",
             "| kernel | registers | spill bytes | static smem bytes | dynamic smem | .f64 lines |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} |" for r in rows]
    lines.append("")
    if bad:
        lines.append("FAIL: float64 instructions in float32 kernels:")
        for name, sample in bad:
            lines.append(f"  {name}: {sample}")
    else:
        lines.append(f"OK: {sum(1 for r in rows if 'float32' in r[0])} float32 kernels, no .f64")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
