"""SASS report: every CUDA kernel of gpurnn compiled for sm_90 and disassembled, no GPU.

For every kernel version (fwd/bwd step, fwd/bwd persistent single-block and grid, gemm) x
every registered cell x float32/float64 (the same compile path as ptx_report:
``ptx_report.compile_all``): ptxas (sm_90, the persistent kernels with their register
cap) -> cubin -> nvdisasm, then per kernel
  registers, spill_bytes (spill stores), stack_bytes, shared_bytes (static; the
              persistent kernels' W / tile / partials are dynamic, sized per call by the
              plan), div_calls (calls to integer division / remainder helpers,
              __cuda_sm20_div_s64 etc.), fp_div_slowpath_calls (calls to the IEEE float
              division / reciprocal slow path, taken only for operands near the ends of
              the exponent range: the cells' sigmoid 1/(1+e^-x)), abi_calls (the rest:
              cudaCGSynchronize for the grid sync, ...),
  inner_loops  every innermost loop of the kernel (a backward branch whose address range
              holds no other loop, no barrier and no call; a loop with a barrier is a loop
              over steps or tiles whose inner loops nvdisasm lays out elsewhere): {"ffma": fused multiply-adds (FFMA, or DFMA in float64),
              "instructions": all instructions of the body, "ratio"}.
JSON: {"kernels": [{"name": "fwd_persist_grid_lstm_float32", ...}], "params": ...}.

Budgets (tests/test_cuda_sass.py, float32): 0 spill bytes in every kernel, 0 div_calls
in the persistent kernels, FFMA / instructions >= 0.5 in every innermost loop of
fwd_persist / bwd_persist that does FFMAs (the dot-product loops; staging loops do none).

Run (own process; the simulator must be OFF, no GPU needed; ptxas from the
nvidia-cuda-nvcc wheel, nvdisasm from the nvidia-cuda-nvdisasm wheel, or PATH):
    NUMBA_ENABLE_CUDASIM=0 python -m gpurnn.cuda.sass_report [--json FILE] [--cells lstm,gru]
                                                             [--dtypes float32] [--sass-dir DIR]
Exit status 0; 3 when NVVM, ptxas or nvdisasm is missing (the message says which).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from . import ptx_report as P

BUDGET_RATIO = 0.5
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+|\.L_\w+):")
_CALL = re.compile(r"CALL\.\w+(?:\.\w+)*\s+`?\(?([A-Za-z_][\w$.]*)")
_BRA = re.compile(r"\bBRA\b(?:\.\w+)*\s+(?:\w+,\s*)?`?\(?(\.L_\w+)")
INT_DIV = re.compile(r"__cuda_sm\d+_(?:div|rem)_[su]\d+|__internal_\w*(?:div|rem)")
FP_DIV = re.compile(r"rcp|div_rn|div_f\d+|sqrt")


def nvdisasm():
    for mod in ("nvidia.cu13", "nvidia.cuda_nvdisasm", "nvidia.cu12"):
        try:
            m = __import__(mod, fromlist=["_"])
        except ImportError:
            continue
        for base in getattr(m, "__path__", []):
            p = os.path.join(base, "bin", "nvdisasm")
            if os.path.exists(p):
                return p
    return shutil.which("nvdisasm")


def kernel_sass(text):
    """The instruction lines of the kernel entry (not of the helper functions nvdisasm
    lists beside it): [(address, instruction text)], {label: address}."""
    sections = re.split(r"^//-+ (\.text\.\S+) -+$", text, flags=re.M)
    body = None
    for i in range(1, len(sections) - 1, 2):
        name = sections[i]
        if "__cuda_" in name or "__internal" in name:
            continue
        body = sections[i + 1]
        break
    if body is None:
        body = text
    insns, labels, pending = [], {}, []
    for line in body.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSN.search(line)
        if m:
            addr = int(m.group(1), 16)
            for lb in pending:
                labels[lb] = addr
            pending = []
            insns.append((addr, m.group(2)))
    return insns, labels


def analyse(text, dtype):
    """Calls and innermost loops of one kernel's SASS (nvdisasm -c output)."""
    insns, labels = kernel_sass(text)
    calls = [m.group(1) for _, ins in insns for m in [_CALL.search(ins)] if m]
    loops = []
    for addr, ins in insns:
        m = _BRA.search(ins)
        if m and m.group(1) in labels and labels[m.group(1)] <= addr:
            loops.append((labels[m.group(1)], addr))
    loops = sorted(set(loops))
    inner = [(a, b) for (a, b) in loops
             if not any((c, d) != (a, b) and a <= c and d <= b for (c, d) in loops)]
    fma = "DFMA" if dtype == "float64" else "FFMA"
    out = []
    for a, b in inner:
        body = [ins for addr, ins in insns if a <= addr <= b and not ins.startswith("NOP")]
        if any(re.search(r"\b(BAR|CALL)\b", ins) for ins in body):
            continue        # a loop over steps / tiles whose inner loops lie elsewhere
        op = [re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0] for ins in body]
        n_fma = sum(1 for o in op if o.split(".")[0] == fma)
        out.append({"ffma": n_fma, "instructions": len(body),
                    "ratio": round(n_fma / max(len(body), 1), 3),
                    "start": f"0x{a:04x}", "end": f"0x{b:04x}"})
    return {
        "div_calls": sum(1 for c in calls if INT_DIV.search(c)),
        "fp_div_slowpath_calls": sum(1 for c in calls if not INT_DIV.search(c) and FP_DIV.search(c)),
        "abi_calls": sorted({c for c in calls if not INT_DIV.search(c) and not FP_DIV.search(c)}),
        "instructions": len(insns),
        "inner_loops": out,
    }


def report(cells=None, dtypes=("float32", "float64"), sass_dir=None, log=print):
    """The list of per-kernel dicts (see module doc). Needs _patch_device() first."""
    ptxas, nvd = P._ptxas(), nvdisasm()
    kernels = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, dtype, ptx in P.compile_all(cells, dtypes):
            cubin = os.path.join(tmp, name + ".cubin")
            ok, text = P.ptxas_compile(ptxas, ptx, P.ptxas_extra(kind), cubin)
            info = P.parse_ptxas(text) if ok else None
            if info is None:
                raise RuntimeError(f"ptxas failed on {name}:\n{text[-2000:]}")
            r = subprocess.run([nvd, "-c", cubin], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"nvdisasm failed on {name}: {r.stderr[-1000:]}")
            if sass_dir:
                os.makedirs(sass_dir, exist_ok=True)
                with open(os.path.join(sass_dir, name + ".sass"), "w") as fh:
                    fh.write(r.stdout)
            smem = info[3] if info[3] is not None else P._declared(ptx)[1]
            k = {"name": name, "kind": kind, "dtype": dtype, "registers": info[0],
                 "spill_bytes": info[1], "stack_bytes": info[2], "shared_bytes": smem}
            k.update(analyse(r.stdout, dtype))
            kernels.append(k)
            loops = " ".join(f"{lp['ffma']}/{lp['instructions']}" for lp in k["inner_loops"])
            log(f"{name:36s} regs {k['registers']:3d} spill {k['spill_bytes']:4d} "
                f"smem {k['shared_bytes']:5d} div {k['div_calls']} fpdiv "
                f"{k['fp_div_slowpath_calls']} loops(ffma/insn) {loops}")
            sys.stdout.flush()
    return kernels


def ratio_cap(k):
    """The FFMA / instruction ratio a persistent kernel's dot loop cannot exceed even with
    no overhead at all: na*nr FMAs per na + nr shared loads (fwd: na = G*JB weight rows,
    JB = kernels.persist_jb(G); bwd: na = JB units; nr = RB rows). >= 0.5 needs
    na*nr >= na + nr + (overhead): the reason the one-gate cells' forward blocks units."""
    from ..cells import get_cell
    from . import kernels as K
    if k["kind"] == "fwd_persist":
        cell = k["name"][len("fwd_persist_grid_"):] if "_grid_" in k["name"] else \
            k["name"][len("fwd_persist_1block_"):]
        cell = cell.rsplit("_", 1)[0]
        G = get_cell(cell).n_gates
        na, nr = G * K.persist_jb(G), K.REPORT_FWD["rb"]
    else:
        na, nr = K.REPORT_BWD["jb"], K.REPORT_BWD["rb"]
    return na * nr / (na * nr + na + nr)


def budget_failures(kernels):
    """Every broken budget, as text (empty: all hold)."""
    bad = []
    for k in kernels:
        if k["dtype"] != "float32":
            continue
        if k["spill_bytes"]:
            bad.append(f"{k['name']}: {k['spill_bytes']} spill bytes")
        if "persist" in k["kind"]:
            if k["div_calls"]:
                bad.append(f"{k['name']}: {k['div_calls']} integer division helper calls")
            for lp in k["inner_loops"]:
                if lp["ffma"] and lp["ffma"] < BUDGET_RATIO * lp["instructions"]:
                    bad.append(f"{k['name']}: inner loop {lp['start']}-{lp['end']} "
                               f"{lp['ffma']} FFMA / {lp['instructions']} instructions")
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write {'kernels': [...]} here")
    ap.add_argument("--cells", help="comma-separated cell names (default: every registered cell)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--sass-dir", help="write each kernel's SASS here")
    args = ap.parse_args(argv)
    code = P.compiler_unavailable("sass_report")
    if code:
        return code
    missing = [n for n, p in (("ptxas (pip install nvidia-cuda-nvcc-cu12)", P._ptxas()),
                              ("nvdisasm (pip install nvidia-cuda-nvdisasm)", nvdisasm()))
               if not p]
    if missing:
        print("sass_report: SKIP missing " + ", ".join(missing))
        return 3
    P._patch_device()
    from . import kernels as K
    kernels = report(args.cells.split(",") if args.cells else None,
                     tuple(args.dtypes.split(",")), args.sass_dir)
    bad = budget_failures(kernels)
    for k in kernels:
        if k["kind"] in ("fwd_persist", "bwd_persist"):
            k["ratio_cap"] = round(ratio_cap(k), 3)
    print("\n".join(["BUDGET " + b for b in bad]) if bad else
          f"OK: budgets hold ({sum(k['dtype'] == 'float32' for k in kernels)} float32 kernels)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"kernels": kernels, "arch": "sm_90",
                       "params": {"fwd_persist": K.REPORT_FWD, "bwd_persist": K.REPORT_BWD,
                                  "max_registers_persistent": K.PERSIST_MAX_REGISTERS}},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
