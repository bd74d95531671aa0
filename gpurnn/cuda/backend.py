"""backend="cuda": Numba CUDA kernels (gpurnn.cuda.kernels) behind the backend contract.

    forward(spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths) -> (out, state_n, tape)
    backward(tape, dout, dstate_n, truncate) -> DirectionGrads

The contract and shapes are gpurnn.contract's: any registered cell (a CellSpec with G
gates and S states), state0 / state_n / dstate_n / dstate0 tuples of S (B, H) arrays.
The kernels are generated from the spec (gpurnn.cuda.kernels). Data flow
(kernels_docs/cuda.md):
  1. Gx = X W_ih^T + b_ih                       one GEMM (cuBLAS via CuPy, else Numba gemm);
                                                token ids x (T, B): a gather (gpurnn.tokens)
  2. recurrence                                 fwd_step x T launches, or fwd_persist x 1
  3. reverse loop                               bwd_step x (T+1), or bwd_persist x 1
  4. dW_hh = dGh^T H_prev, dW_ih = dGx^T X, dX = dGx W_ih, db = column sums   (GEMMs)
     no dX with need_dx=False or token ids, whose dW_ih is a scatter-add (gpurnn.tokens:
     CuPy's atomic add.at on the device; without CuPy on a host copy of dGx)

Arrays: ``xp`` is CuPy on a real GPU with CuPy installed, else NumPy. With CuPy every
buffer is a CuPy array handed to the Numba kernels through __cuda_array_interface__
(zero-copy); without it (the simulator, or a GPU without CuPy) inputs are copied to
Numba device arrays and results copied back. The tape stays on the device.

Algorithm choice ``algo``:
  "step"        one launch per timestep (always possible).
  "persistent"  one launch for the sequence if the W_hh slices fit on chip: J units per
                block with G*J*H*itemsize (+ split-K partial sums) within the per-block
                shared-memory limit (opt-in maximum, 227 KiB on an H100; 48 KiB in the
                simulator) and B*J/RB <= 384 threads; one block (no grid sync) when J = H,
                else a cooperative grid of ceil(H/J) blocks that must be co-resident
                (max_cooperative_grid_blocks); otherwise the step kernel runs and the
                plan says why.
  "auto"        on a GPU: the faster of the two, timed once per (cell, shape class, dtype)
                and cached on disk (gpurnn.cuda.autotune); where no timing exists (the
                simulator, GPURNN_AUTOTUNE=0) the static rule: "persistent" where it fits,
                else "step".

Plans: what ran is recorded per call, never on the backend object: tape["plan"] for the
forward and DirectionGrads.plan for the backward, a dict with "algorithm" ("step",
"persistent-1block" or "persistent-grid"), "requested" (the algo setting), for the
persistent kernels "J", "blocks", "threads", "smem", "KS", "RB", "JB", for
the step kernel "block", and "declined" (why) whenever the persistent kernel was requested
or preferred (auto) but cannot run: it does not fit on chip, needs a grid the settings
forbid, exceeds the compiled kernel's thread limit, or its blocks cannot be co-resident.
Every such fallback warns once per reason (RuntimeWarning); GPURNN_STRICT=1 raises
FallbackError instead. Real errors raise; nothing falls back silently.

Streams: by default everything runs on Numba's default stream (and CuPy's current
stream). ``with backend.use_stream(ptr):`` issues every kernel launch and device-array
copy of this backend on the CUDA stream whose raw handle is ``ptr`` (``cuda.external_stream``;
the torch bridge passes torch's current stream), and CuPy work too.
"""
import contextlib
import functools
import os
import threading

import numpy as np
from numba import cuda

from ..cells import get_cell
from ..contract import DirectionGrads, FallbackError, decline, strict  # noqa: F401 (re-exported)
from ..tokens import gather_columns, is_token_ids, scatter_add_columns
from . import kernels as K

SMEM_DYN_LIMIT = 48 * 1024      # dynamic shared memory without the opt-in attribute
MAX_THREADS = K.PERSIST_MAX_THREADS     # per persistent block (register cap: kernels.py)
# One block (no grid sync) while a step's recurrent FMAs B*G*H*H stay under this: a grid
# sync costs ~1-2 us (~2^18 FMAs of one SM), more than one SM needs for smaller steps.
SINGLE_BLOCK_FMAS = 1 << 18


@functools.lru_cache(maxsize=None)
def _bank_stride(base, KS, ny, nz, mult, ydim):
    """The smallest row stride >= base (padding < 32 elements) under which the lanes of
    every warp of a persistent block (lane = ks + KS*(y + ny*z)) reading element
    row*stride + ks, row = mult*y (ydim: the W layout, units) or mult*z (the tile layout,
    row groups), hit as few 4-byte banks more than once as possible (0 conflicts where a
    padding allows it; equal addresses are a broadcast, not a conflict)."""
    nth = KS * ny * nz
    best = None
    for pad in range(32):
        stride = base + pad
        worst = 1
        for w0 in range(0, nth, 32):
            banks = {}
            for lane in range(w0, min(nth, w0 + 32)):
                ks, rest = lane % KS, lane // KS
                y, z = rest % ny, rest // ny
                addr = (y if ydim else z) * mult * stride + ks
                banks.setdefault(addr % 32, set()).add(addr)
            worst = max(worst, max(len(v) for v in banks.values()))
        if best is None or worst < best[0]:
            best = (worst, stride)
        if worst == 1:
            break
    return best[1]


def _opt_in_dynamic_smem(cufunc, nbytes):
    """Raise a kernel's dynamic shared-memory limit above 48 KiB (the opt-in numba-cuda
    never sets itself). Uses the driver binding numba-cuda's own
    ``set_shared_memory_carveout`` uses (cuKernelSetAttribute on the function's handle);
    if that API moved, raise a clear error instead of a stray AttributeError."""
    try:
        from numba.cuda.cudadrv.driver import binding, driver
        attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        handle, dev = cufunc.handle, cufunc.device.id
    except Exception as exc:       # numba-cuda internals moved
        import numba
        raise RuntimeError(
            f"gpurnn: cannot opt in to {nbytes} B of dynamic shared memory (> 48 KiB) with "
            f"numba {numba.__version__}: the driver binding gpurnn uses "
            "(numba.cuda.cudadrv.driver.binding / driver.cuKernelSetAttribute, "
            f"cufunc.handle) is not there ({type(exc).__name__}: {exc}); use algo='step' or "
            "units_per_block small enough for 48 KiB, and report it") from exc
    driver.cuKernelSetAttribute(attr, int(nbytes), handle, dev)


def _cupy():
    if K.SIMULATOR:
        return None
    try:
        import cupy
        return cupy
    except Exception:       # ImportError, or a CuPy that cannot find its CUDA libraries
        return None


def _is_device_array(a):
    """A Numba device array (real or simulated) or another __cuda_array_interface__ exporter."""
    if isinstance(a, np.ndarray):
        return False
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host")


class CudaBackend:
    """Numba CUDA backend; ``CudaBackend(algo="persistent")`` configures the kernel choice.

    algo: "auto" | "step" | "persistent" (see module doc). units_per_block: force J (the
    hidden units each persistent block owns; testing/tuning). grid_sync: force the
    cooperative (True) or single-block (False) persistent variant when both could run.
    split_k: force KS, the threads sharing one unit's dot product in the persistent kernels.
    rows_per_thread: force RB, the batch rows each persistent thread applies a weight to
    (register blocking, forward and backward; default 4 on a GPU, 1 in the simulator).
    units_per_thread: force JB, the hidden units each persistent thread applies an h /
    dGh value to (forward and backward; default on a GPU kernels.persist_jb(G) in the
    forward, 4 for one gate, and 4 in the backward; 1 in the simulator).
    poison: fill every buffer the backend allocates with NaN first (tests: unwritten
    elements then show up as NaN).
    """
    name = "cuda"
    dtypes = ("float32", "float64")
    fold_hooks = True          # forward(gx0=), backward(need_dgates=): gpurnn.contract

    def __init__(self, algo="auto", units_per_block=None, grid_sync=None, split_k=None,
                 rows_per_thread=None, units_per_thread=None, poison=False):
        if algo not in ("auto", "step", "persistent"):
            raise ValueError(f"algo: expected 'auto', 'step' or 'persistent', got {algo!r}")
        self.algo = algo
        self.units_per_block = units_per_block
        self.grid_sync = grid_sync
        self.split_k = split_k
        self.rows_per_thread = rows_per_thread
        self.units_per_thread = units_per_thread
        self.poison = bool(poison)
        self._cp = _cupy()
        self.xp = self._cp if self._cp is not None else np
        self._tls = threading.local()          # .stream: the use_stream stream, per thread
        # algo="auto" by measurement on a real GPU (gpurnn.cuda.autotune); the static
        # rule in the simulator and with GPURNN_AUTOTUNE=0
        self._tuner = None
        if algo == "auto" and not K.SIMULATOR and os.environ.get("GPURNN_AUTOTUNE", "1") != "0":
            from .autotune import AutoTuner, gpu_timer
            self._tuner = AutoTuner(timer=gpu_timer)

    def __repr__(self):
        return f"CudaBackend(algo={self.algo!r})"

    # ------------------------------------------------------------------ contract
    def is_available(self):
        try:
            return bool(cuda.is_available())
        except Exception:
            return False

    def is_auto_candidate(self):
        return (not K.SIMULATOR) and self.is_available()

    def asarray(self, a, dtype=None):
        if self._cp is not None:
            return self._cp.asarray(a, dtype=dtype)
        if _is_device_array(a) and not isinstance(a, np.ndarray):
            a = self._to_host(a)
        return np.asarray(a, dtype=dtype)

    def to_user(self, a, like):
        """NumPy in -> NumPy out; CuPy in -> CuPy; Numba device array in -> device array."""
        cp = self._cp
        if isinstance(like, np.ndarray) or not (_is_device_array(like) or
                                                (cp is not None and isinstance(like, cp.ndarray))):
            return a.get() if cp is not None and isinstance(a, cp.ndarray) else a
        if cp is not None and isinstance(like, cp.ndarray):
            return a
        # a Numba device array (or another __cuda_array_interface__ exporter)
        if cp is not None:
            return cuda.as_cuda_array(a)         # zero-copy view of the CuPy buffer
        return self._to_device(np.ascontiguousarray(a))

    # ------------------------------------------------------------------ streams
    @property
    def stream(self):
        """The Numba stream launches and copies go to: the innermost ``use_stream`` of
        this thread, else 0 (Numba's default stream)."""
        s = getattr(self._tls, "stream", None)
        return 0 if s is None else s

    @contextlib.contextmanager
    def use_stream(self, ptr):
        """Issue this backend's work on another CUDA stream inside the ``with`` block.

        ``ptr``: a raw ``cudaStream_t`` handle as an int (torch:
        ``torch.cuda.current_stream().cuda_stream``; CuPy: ``stream.ptr``), wrapped with
        ``numba.cuda.external_stream``; or a Numba stream object (``cuda.stream()``), used
        as is. Every kernel launch and host<->device copy of this backend then goes to that
        stream, and CuPy operations too (``cupy.cuda.ExternalStream``). Nests: the previous
        stream is restored on exit. Per thread. Results copied back to the host are
        synchronised with the stream before they are returned. Raw handles need a real GPU:
        in the CUDA simulator (which has no external streams) they raise RuntimeError;
        Numba stream objects work there. Yields the Numba stream.
        """
        raw = None
        if isinstance(ptr, (int, np.integer)) and not isinstance(ptr, bool):
            raw = int(ptr)
            if raw < 0:
                raise ValueError(f"use_stream: ptr must be a CUDA stream handle >= 0, got {raw}")
            if K.SIMULATOR:
                raise RuntimeError(
                    "use_stream: raw CUDA stream handles need a real GPU; Numba's CUDA "
                    "simulator has no external streams (pass a numba.cuda.stream() object "
                    "there, or no stream)")
            stream = cuda.external_stream(raw)
        elif hasattr(ptr, "synchronize") and hasattr(ptr, "auto_synchronize"):
            stream = ptr                      # a Numba (or simulated) stream object
        else:
            raise TypeError("use_stream: expected a CUDA stream handle (int) or a Numba "
                            f"stream object, got {type(ptr).__name__}")
        cp_stream = contextlib.nullcontext()
        if self._cp is not None:
            if raw is None:
                raw = int(int(stream))        # numba Stream.__int__: the raw handle
            cp_stream = self._cp.cuda.ExternalStream(raw)
        prev = getattr(self._tls, "stream", None)
        self._tls.stream = stream
        try:
            with cp_stream:
                yield stream
        finally:
            self._tls.stream = prev

    def _launch(self, kern, grid, block, smem=0):
        """``kern[grid, block]`` on the current stream (see use_stream)."""
        return kern[grid, block, self.stream, smem]

    def _to_host(self, d):
        """Host copy of a Numba device array, complete when it returns."""
        s = self.stream
        h = d.copy_to_host(stream=s)
        if not isinstance(s, int):
            s.synchronize()                   # a copy on a stream is asynchronous
        return h

    def _to_device(self, host):
        return cuda.to_device(host, stream=self.stream)

    # ------------------------------------------------------------------ buffers
    def _empty(self, n, dtype):
        n = max(int(n), 1)
        if self._cp is not None:
            return (self._cp.full(n, np.nan, dtype) if self.poison else self._cp.empty(n, dtype))
        if self.poison:
            return self._to_device(np.full(n, np.nan, dtype))
        return cuda.device_array(n, dtype, stream=self.stream)

    def _dev(self, a, dtype):
        """A flat device copy/view of an xp array (None stays None)."""
        if a is None:
            return None
        if self._cp is not None:
            return self._cp.ascontiguousarray(a, dtype=dtype).ravel()
        return self._to_device(np.ascontiguousarray(a, dtype=dtype).ravel())

    def _nb(self, *arrays):
        """Numba device-array views (zero-copy) of CuPy buffers, made once per call: a
        kernel launch given CuPy arrays re-reads __cuda_array_interface__ (and may sync
        the exporting stream) for every argument of every one of the T launches."""
        if self._cp is None:
            return arrays
        out = []
        for a in arrays:
            try:
                out.append(cuda.as_cuda_array(a, sync=False))
            except TypeError:
                out.append(cuda.as_cuda_array(a))
        return tuple(out)

    def _from_host(self, host):
        if self._cp is not None:
            return self._cp.asarray(host)
        return self._to_device(host)

    def _out(self, d, start, shape):
        """xp array of ``shape`` from the flat device buffer d[start:]."""
        n = int(np.prod(shape))
        if self._cp is not None:
            return d[start:start + n].reshape(shape).copy()
        return self._to_host(d[start:start + n]).reshape(shape)

    def _add_head(self, d, a, n, dtype):
        """d[:n] += a (flattened) on the flat device buffer d: in place with CuPy, else
        through one host copy of those n elements (the simulator, a GPU without CuPy)."""
        if self._cp is not None:
            d[:n] += self._cp.asarray(a, dtype).ravel()
            return
        head = self._to_host(d[:n])
        head += np.asarray(self._to_host(a) if _is_device_array(a) else a, dtype).ravel()
        d[:n].copy_to_device(head, stream=self.stream)

    def _zeros(self, n, dtype):
        return self._from_host(np.zeros(max(int(n), 1), dtype))

    def _states(self, state0, S, B, H, dtype, T):
        """st buffer (S, T+1, B, H): st[s, 0] = state0[s] (zeros if None), the rest
        poisoned/empty (every element is written by the forward)."""
        n = (T + 1) * B * H
        if self._cp is not None:
            buf = self._empty(S * n, dtype)
            for s in range(S):
                v = state0[s]
                buf[s * n:s * n + B * H] = 0 if v is None else self._cp.asarray(v, dtype).ravel()
            return buf
        host = np.full(S * n, np.nan if self.poison else 0, dtype)
        for s in range(S):
            v = state0[s]
            host[s * n:s * n + B * H] = 0 if v is None else np.asarray(
                self._to_host(v) if _is_device_array(v) else v, dtype).ravel()
        return self._from_host(host)

    def _stack(self, parts, S, B, H, dtype):
        """A flat (S, B, H) device buffer from S entries (None = zeros)."""
        if all(p is None for p in parts):
            return self._zeros(S * B * H, dtype)
        if self._cp is not None:
            return self._cp.ascontiguousarray(self._cp.stack(
                [self._cp.zeros((B, H), dtype) if p is None else self._cp.asarray(p, dtype).reshape(B, H)
                 for p in parts]), dtype=dtype).ravel()
        host = np.zeros((S, B, H), dtype)
        for s, p in enumerate(parts):
            if p is not None:
                host[s] = np.asarray(self._to_host(p) if _is_device_array(p) else p, dtype).reshape(B, H)
        return self._from_host(host.ravel())

    # ------------------------------------------------------------------ GEMM
    def _mm(self, dtype, a, a_shape, ta, b, b_shape, tb, bias=None):
        """op(a) @ op(b) (+ bias); a, b flat device buffers of the stored shapes.
        Returns a flat device buffer (M*N,)."""
        M, Ka = (a_shape[1], a_shape[0]) if ta else a_shape
        Kb, N = (b_shape[1], b_shape[0]) if tb else b_shape
        assert Ka == Kb, (a_shape, ta, b_shape, tb)
        cp = self._cp
        if cp is not None:
            A = a[:a_shape[0] * a_shape[1]].reshape(a_shape)
            Bm = b[:b_shape[0] * b_shape[1]].reshape(b_shape)
            C = cp.matmul(A.T if ta else A, Bm.T if tb else Bm)
            if bias is not None:
                C += bias
            return cp.ascontiguousarray(C).ravel()
        sam, sak = (1, M) if ta else (Ka, 1)
        sbk, sbn = (1, Kb) if tb else (N, 1)
        c = self._empty(M * N, dtype)
        has_bias = bias is not None
        kern = K.gemm_kernel(dtype)
        grid = ((N + K.TS - 1) // K.TS, (M + K.TS - 1) // K.TS)
        self._launch(kern, grid, (K.TS, K.TS))(M, N, Ka, a, sam, sak, b, sbk, sbn, c,
                                               bias if has_bias else c, has_bias)
        return c

    def _colsum(self, dtype, d, rows, cols):
        if self._cp is not None:
            return d[:rows * cols].reshape(rows, cols).sum(axis=0)
        ones = self._from_host(np.ones(rows, dtype))
        return self._mm(dtype, ones, (1, rows), False, d, (rows, cols), False)

    # ------------------------------------------------------------------ planning
    def _smem_budget(self, itemsize):
        """Dynamic shared memory a persistent block may use (bytes): the per-block limit
        (opt-in maximum on a GPU, 227 KiB on an H100/H200; 48 KiB in the simulator) minus
        1 KiB (the persistent kernels have no static shared memory)."""
        limit = SMEM_DYN_LIMIT
        if not K.SIMULATOR:
            limit = max(limit, int(cuda.get_current_device().MAX_SHARED_MEMORY_PER_BLOCK_OPTIN))
        return limit - 1024

    def _plan(self, G, B, H, itemsize, rb=1, jb=1, backward=False):
        """('step', reason) or ('persistent', params dict). reason: None when the step
        kernel was asked for, else why the persistent kernel cannot run (the plan's
        "declined").

        rb: rows per thread, jb: units per thread (register blocking).
        params: J (units per block, a multiple of jb), blocks, block (KS, J/jb, ceil(B/rb)),
        threads, smem (bytes), grid, KS, KT (inputs per staged tile of h / dGh: all of
        them whenever they fit), WS / VS (bank-padded row strides of the W and tile
        layouts), reduce ("shuffle", "shared" or "none").

        J is the largest that fits the shared-memory budget and 384 threads. J = H (one
        block, no grid sync) is kept when the step is small (B*G*H*H <= SINGLE_BLOCK_FMAS;
        always in the simulator); otherwise J is capped at ceil(H / #SMs) so the
        cooperative grid spreads over the whole GPU; KS (threads per dot product) is the
        largest power of two <= 32 that keeps the block <= 384 threads and >= 8 inputs per
        thread (1 in the simulator, where every thread costs ~0.2 ms, unless split_k is
        given).
        """
        if self.algo == "step":
            return "step", None
        budget = self._smem_budget(itemsize)
        K_len = G * H if backward else H            # length of each dot product
        groups = -(-B // rb)
        NR = groups * rb
        per_unit = (G * H + 32) * itemsize          # a unit's W slice, padded
        tile_min = NR * (min(K_len, 32) + 32) * itemsize
        if per_unit * jb + tile_min > budget:
            return "step", (f"one hidden unit's W_hh slice ({per_unit} B) and a minimal "
                            f"tile exceed the shared-memory budget ({budget} B)")
        if groups > MAX_THREADS:
            return "step", (f"{groups} row groups of {rb} rows exceed {MAX_THREADS} threads "
                            "per block")
        J = min((budget - tile_min) // per_unit, jb * (MAX_THREADS // groups), H)
        if self.units_per_block is not None:
            J = max(1, min(J, int(self.units_per_block)))
        single = J >= H and self.grid_sync is not True and (
            K.SIMULATOR or self.grid_sync is False or self.units_per_block is not None
            or B * G * H * H <= SINGLE_BLOCK_FMAS)
        if not single and self.units_per_block is None and not K.SIMULATOR:
            nsm = cuda.get_current_device().MULTIPROCESSOR_COUNT
            J = max(1, min(J, -(-H // nsm)))      # spread the units over every SM
        nblk = -(-H // J)
        J = -(-H // nblk)
        J = -(-J // jb) * jb                       # whole unit groups
        if J > H and J - jb >= 1 and -(-H // (J - jb)) == nblk:
            J -= jb
        nblk = -(-H // J)
        jg = J // jb
        if self.split_k is not None:
            KS = int(self.split_k)
        elif K.SIMULATOR:
            KS = 1
        else:
            KS = 32                                # >= 8 inputs per thread
            while KS > 1 and (groups * jg * KS > MAX_THREADS or KS > max(1, K_len // 8)):
                KS //= 2
        nacc = (1 if backward else G) * jb * rb      # accumulators per thread
        while True:
            threads = groups * jg * KS
            red = nacc * threads if KS > 1 and not K.uses_shuffle(KS) else 0
            WS = _bank_stride(G * H, KS, jg, groups, jb, 1)
            avail = budget // itemsize - J * WS - red
            KT = min(K_len, max(1, K.PERSIST_VT // NR), avail // NR - 32)
            if KT >= 1 or KS == 1:
                break
            KS //= 2
        if threads > MAX_THREADS:
            return "step", f"{threads} threads per block exceed {MAX_THREADS}"
        if KT < 1:
            return "step", (f"no tile of the {'dGh' if backward else 'h'} rows fits the "
                            f"shared-memory budget ({budget} B) beside the W_hh slices")
        VS = _bank_stride(KT, KS, jg, groups, rb, 0)
        smem = (J * WS + NR * VS + red) * itemsize
        if smem > budget:
            return "step", f"{smem} B of shared memory exceed the budget ({budget} B)"
        grid = nblk > 1 if self.grid_sync is None else bool(self.grid_sync)
        if nblk > 1 and not grid:
            return "step", (f"needs a grid of {nblk} blocks and grid_sync=False forbids "
                            "the cooperative kernel")
        return "persistent", dict(J=J, blocks=nblk, block=(KS, jg, groups), threads=threads,
                                  smem=smem, grid=grid, KS=KS, KT=KT, WS=WS, VS=VS,
                                  reduce=("none" if KS == 1 else
                                          "shuffle" if K.uses_shuffle(KS) else "shared"))

    def _compiled(self, kern, args):
        return kern.compile(tuple(kern.typeof_pyval(a) for a in args))

    def _prepare_gpu(self, kern, args, nblk, block, threads, smem, grid):
        """On a GPU: opt in to > 48 KiB of dynamic shared memory, and check that the
        compiled kernel takes ``threads`` per block and that a cooperative grid of nblk
        blocks can be co-resident. Returns None (ready) or why the kernel cannot run."""
        compiled = self._compiled(kern, args)
        cufunc = compiled._codelibrary.get_cufunc()
        maxthreads = cufunc.attrs.maxthreads
        if threads > maxthreads:
            return (f"{threads} threads per block exceed the compiled kernel's limit "
                    f"({maxthreads}, from its registers)")
        static = int(cufunc.attrs.shared)
        if smem + static > SMEM_DYN_LIMIT:
            _opt_in_dynamic_smem(cufunc, int(smem))
        if grid:
            most = compiled.max_cooperative_grid_blocks(block, smem)
            if smem + static > SMEM_DYN_LIMIT and most == 0:
                raise RuntimeError(
                    f"gpurnn: {kern.py_func.__name__} needs {smem} B of dynamic shared "
                    "memory; the opt-in (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) "
                    "was set but the occupancy calculator still fits no block: the "
                    "numba-cuda in use handles the attribute differently (use "
                    "algo='step' meanwhile and report it)")
            if nblk > most:
                return (f"a cooperative grid of {nblk} blocks cannot be co-resident "
                        f"(at most {most})")
        return None

    def _run_persistent(self, kern, dtype, params, args, plan):
        """Launch a persistent kernel; True if it ran (plan filled in), False with
        plan["declined"] set if it cannot run here. Real errors raise."""
        nblk, block, threads, smem, grid = (params[k] for k in
                                            ("blocks", "block", "threads", "smem", "grid"))
        if K.SIMULATOR:
            most = kern.overloads[None].max_cooperative_grid_blocks(threads) if grid else nblk
            why = (None if nblk <= most else
                   f"a cooperative grid of {nblk} blocks cannot be co-resident (at most {most})")
        else:
            why = self._prepare_gpu(kern, args, nblk, block, threads, smem, grid)
        if why is not None:
            self._decline(plan, why)
            return False
        self._launch(kern, nblk, block, smem)(*args)
        plan.update(algorithm="persistent-grid" if grid else "persistent-1block",
                    **{k: params[k] for k in ("J", "blocks", "block", "threads", "smem", "KS",
                                              "KT", "WS", "VS", "reduce")})
        return True

    def _run_step(self, kern, B, H, steps, args_fn, plan):
        """The step kernel once per t in ``steps``, args_fn(t) its arguments; block
        (min(32, H), BY) units x rows, BY = min(B, 4) (B in the simulator)."""
        bx = min(32, H)
        by = min(B, 4 if not K.SIMULATOR else B, max(1, 256 // bx))
        launch = self._launch(kern, ((H + bx - 1) // bx, (B + by - 1) // by), (bx, by))
        for t in steps:
            launch(*args_fn(t))
        plan.update(algorithm="step", block=(bx, by))

    def _measured(self, spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths):
        """auto on a GPU: the step or the persistent kernel, whichever ran forward +
        backward faster for this (cell, shape class, dtype), timed once and cached on disk
        (gpurnn.cuda.autotune). Returns (algo, the plan's "auto" note)."""
        from .autotune import shape_class
        T, B = int(x.shape[0]), int(x.shape[1])
        H = int(w_hh.shape[1])
        dev = cuda.get_current_device().name
        key = shape_class(spec.name, B, H, np.dtype(w_hh.dtype).name,
                          dev.decode() if isinstance(dev, bytes) else str(dev))

        def trial(algo):
            be = CudaBackend(algo=algo, units_per_block=self.units_per_block,
                             grid_sync=self.grid_sync, split_k=self.split_k,
                             rows_per_thread=self.rows_per_thread,
                             units_per_thread=self.units_per_thread)

            def run():
                out, _, tape = be.forward(spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths)
                be.backward(tape, self.xp.ones((T, B, H), w_hh.dtype), None, None, need_dx=False)
            return run

        win = self._tuner.choose(key, {"step": trial("step"), "persistent": trial("persistent")})
        if win is None:
            return "persistent", "static rule (no timing)"
        return win, f"measured ({key}): {win}"

    def _rb(self, B):
        """RB: rows per persistent thread."""
        rb = self.rows_per_thread or (1 if K.SIMULATOR else K.PERSIST_RB)
        return max(1, min(int(rb), B))

    def _jb(self, H, G=None):
        """JB: units per persistent thread (forward: G given, kernels.persist_jb(G))."""
        dflt = K.PERSIST_JB if G is None else K.persist_jb(G)
        jb = self.units_per_thread or (1 if K.SIMULATOR else dflt)
        return max(1, min(int(jb), H))

    def _new_plan(self, reason):
        plan = {"algorithm": None, "requested": self.algo}
        if reason is not None:
            self._decline(plan, reason)
        return plan

    def _decline(self, plan, reason):
        """A fallback to the step kernel: the reason goes into the plan, and is warned
        about once per process (GPURNN_STRICT=1: raises FallbackError instead)."""
        msg = "persistent: " + reason
        plan["declined"] = msg
        decline(f"gpurnn cuda (algo={self.algo!r}): the persistent kernel cannot run, "
                f"running the step kernel instead ({msg})", stacklevel=5)

    # ------------------------------------------------------------------ forward
    def forward(self, spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths, gx0=None):
        spec = get_cell(spec)
        T, B = (int(s) for s in x.shape[:2])
        I, H = int(w_ih.shape[1]), int(w_hh.shape[1])
        G, S, V = spec.n_gates, spec.n_states, spec.n_saves
        GH = G * H
        state0 = (None,) * S if state0 is None else tuple(state0)
        if len(state0) != S:
            raise ValueError(f"state0: cell {spec.name!r} has {S} states {spec.states}, "
                             f"got a tuple of {len(state0)}")
        dtype = np.dtype(w_hh.dtype)
        tokens = is_token_ids(x)
        xd = x if tokens else self._dev(x, dtype)    # ids stay xp arrays: the scatter's
        wih = None if tokens else self._dev(w_ih, dtype)     # for GEMM 1 and dX only
        whh = self._dev(w_hh, dtype)
        wt = self._dev(self.xp.ascontiguousarray(w_hh.T), dtype)
        bih = self._dev(b_ih, dtype)
        bhh = self._dev(b_hh, dtype) if b_hh is not None else self._zeros(GH, dtype)
        lens_host = np.full(B, T, np.int32) if lengths is None else np.asarray(lengths, np.int32)
        lens = self._from_host(lens_host)

        if tokens:     # xp: CuPy on the device, else NumPy on the host, then copied over
            g = gather_columns(self.xp, w_ih, x)
            gx = self._dev(g if b_ih is None else g + b_ih, dtype)
        else:
            gx = self._mm(dtype, xd, (T * B, I), False, wih, (GH, I), True, bih)
        if gx0 is not None:                    # the contract's hook: gx[0] += gx0
            self._add_head(gx, gx0, B * GH, dtype)
        st = self._states(state0, S, B, H, dtype, T)
        act = self._empty(T * B * V * H, dtype) if V else self._zeros(1, dtype)
        out = self._empty(T * B * H, dtype)

        rb, jb = self._rb(B), self._jb(H, G)
        algo, params = self._plan(G, B, H, dtype.itemsize, rb, jb)
        plan = self._new_plan(params if algo == "step" else None)
        auto_step = False
        if algo == "persistent" and self._tuner is not None:
            algo, plan["auto"] = self._measured(spec, x, w_ih, w_hh, b_ih, b_hh, state0,
                                                lengths)
            auto_step = algo == "step"
        ran = False
        if algo == "persistent":
            kern = K.fwd_persist_kernel(spec, dtype, params["grid"], rb, params["KS"], jb)
            args = (T, B, H, params["KT"], params["WS"], params["VS"]) + self._nb(
                gx, whh, bhh, lens, st, act, out)
            ran = self._run_persistent(kern, dtype, params, args, plan)
            if ran:
                plan.update(RB=rb, JB=jb)
        if not ran:
            bufs = self._nb(gx, wt, bhh, lens, st, act, out)
            self._run_step(K.fwd_step_kernel(spec, dtype), B, H, range(T),
                           lambda t: (t, T, B, H) + bufs, plan)

        n = (T + 1) * B * H
        out_x = self._out(out, 0, (T, B, H))
        state_n = tuple(self._out(st, s * n + T * B * H, (B, H)) for s in range(S))
        tape = dict(spec=spec, T=T, B=B, I=I, H=H, dtype=dtype, x=xd, w_ih=wih, w_hh=whh,
                    wt=wt, auto_step=auto_step, lens=lens, st=st, act=act, has_bias=(b_ih is not None, b_hh is not None),
                    plan=plan)
        return out_x, state_n, tape

    # ------------------------------------------------------------------ backward
    def backward(self, tape, dout, dstate_n, truncate, need_dx=True, need_dgates=False):
        spec, T, B, I, H, dtype = (tape[k] for k in ("spec", "T", "B", "I", "H", "dtype"))
        tokens = is_token_ids(tape["x"])
        need_dx = need_dx and not tokens                   # ids have no gradient
        G, S = spec.n_gates, spec.n_states
        GH = G * H
        dstate_n = (None,) * S if dstate_n is None else tuple(dstate_n)
        if len(dstate_n) != S:
            raise ValueError(f"dstate_n: cell {spec.name!r} has {S} states {spec.states}, "
                             f"got a tuple of {len(dstate_n)}")
        trunc = 0 if truncate is None else int(truncate)
        dd = self._dev(dout, dtype)
        dsn = self._stack(dstate_n, S, B, H, dtype)
        dgh = self._empty(T * B * GH, dtype)
        dgx = dgh if spec.all_tied else self._empty(T * B * GH, dtype)
        ds0 = self._empty(S * B * H, dtype)
        w, lens, st, act = tape["w_hh"], tape["lens"], tape["st"], tape["act"]

        rb, jb = self._rb(B), self._jb(H)
        algo, params = self._plan(G, B, H, dtype.itemsize, rb, jb, backward=True)
        plan = self._new_plan(params if algo == "step" else None)
        if algo == "persistent" and tape.get("auto_step"):
            algo, plan["auto"] = "step", "measured: step (the forward's timing)"
        ran = False
        if algo == "persistent":
            bufs = self._nb(dgh, dgx, tape["wt"], lens, st, act, dd, dsn, ds0)
            kern = K.bwd_persist_kernel(spec, dtype, params["grid"], rb, params["KS"], jb)
            tph = T % trunc if trunc > 0 else 0
            args = (T, B, H, params["KT"], params["WS"], params["VS"], trunc, tph) + bufs
            ran = self._run_persistent(kern, dtype, params, args, plan)
            if ran:
                plan.update(RB=rb, JB=jb)
        if not ran:
            dsc = self._empty(S * B * H, dtype)
            a = self._nb(dgh, dgx, w, lens, st, act, dd, dsc, dsn, ds0)
            self._run_step(K.bwd_step_kernel(spec, dtype), B, H, range(T - 1, -2, -1),
                           lambda t: (t, T, B, H, trunc) + a, plan)

        TB = T * B
        o = self._out
        dw_hh = self._mm(dtype, dgh, (TB, GH), True, st, (TB, H), False)   # st[0, :T] = h_{t-1}
        dw_ih = None if tokens else self._mm(dtype, dgx, (TB, GH), True, tape["x"], (TB, I), False)
        dx = None
        if need_dx:
            dx = self._mm(dtype, dgx, (TB, GH), False, tape["w_ih"], (GH, I), False)
        has_b_ih, has_b_hh = tape["has_bias"]
        db_ih = self._colsum(dtype, dgx, TB, GH) if has_b_ih else None
        db_hh = self._colsum(dtype, dgh, TB, GH) if has_b_hh else None
        if tokens:     # on xp, as the forward's gather: CuPy on the device, else a host copy
            dg = dgx[:TB * GH].reshape(TB, GH) if self._cp is not None else o(dgx, 0, (TB, GH))
            dw_ih = scatter_add_columns(self.xp, self.xp.zeros((GH, I), dtype),
                                        tape["x"].reshape(TB), dg)
        else:
            dw_ih = o(dw_ih, 0, (GH, I))
        return DirectionGrads(
            dx=o(dx, 0, (T, B, I)) if need_dx else None,
            dstate0=tuple(o(ds0, s * B * H, (B, H)) for s in range(S)),
            dw_ih=dw_ih, dw_hh=o(dw_hh, 0, (GH, H)),
            db_ih=o(db_ih, 0, (GH,)) if db_ih is not None else None,
            db_hh=o(db_hh, 0, (GH,)) if db_hh is not None else None,
            plan=plan, dgates=o(dgh, 0, (T, B, GH)) if need_dgates else None)
