"""backend="cuda": Numba CUDA kernels (gpurnn.cuda.kernels) behind the backend contract.

    forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths) -> (out, h_n, c_n, tape)
    backward(tape, dout, dh_n, dc_n, truncate) -> DirectionGrads

Shapes as gpurnn.reference. Data flow (kernels_docs/cuda.md):
  1. Gx = X W_ih^T + b_ih                       one GEMM (cuBLAS via CuPy, else Numba gemm)
  2. recurrence                                 fwd_step x T launches, or fwd_persist x 1
  3. reverse loop                               bwd_step x (T+1), or bwd_persist x 1
  4. dW_hh = dGh^T H_prev, dW_ih = dGx^T X, dX = dGx W_ih, db = column sums   (GEMMs)

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
                (max_cooperative_grid_blocks); otherwise it falls back to "step".
  "auto"        "persistent" where it fits, else "step" (the persistent kernel removes T-1
                launches and keeps W_hh on chip, so when it fits it is never slower in our
                cost model: kernels_docs/cuda.md).
``last_algo`` records what actually ran: "step", "persistent-1block" or "persistent-grid".

Streams: by default everything runs on Numba's default stream (and CuPy's current
stream). ``with backend.use_stream(ptr):`` issues every kernel launch and device-array
copy of this backend on the CUDA stream whose raw handle is ``ptr`` (``cuda.external_stream``;
the torch bridge passes torch's current stream), and CuPy work too.
"""
import contextlib
import threading

import numpy as np
from numba import cuda

from ..backend import DirectionGrads
from ..cells import cell_spec
from . import kernels as K

SMEM_DYN_LIMIT = 48 * 1024      # dynamic shared memory without the opt-in attribute
MAX_THREADS = K.PERSIST_MAX_THREADS     # per persistent block (register cap: kernels.py)
# One block (no grid sync) while a step's recurrent FMAs B*G*H*H stay under this: a grid
# sync costs ~1-2 us (~2^18 FMAs of one SM), more than one SM needs for smaller steps.
SINGLE_BLOCK_FMAS = 1 << 18


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
    rows_per_thread: force RB, the batch rows each forward persistent thread applies a
    weight to (register blocking; default 4 on a GPU, 1 in the simulator).
    poison: fill every buffer the backend allocates with NaN first (tests: unwritten
    elements then show up as NaN).
    """
    name = "cuda"
    dtypes = ("float32", "float64")

    def __init__(self, algo="auto", units_per_block=None, grid_sync=None, split_k=None,
                 rows_per_thread=None, poison=False):
        if algo not in ("auto", "step", "persistent"):
            raise ValueError(f"algo: expected 'auto', 'step' or 'persistent', got {algo!r}")
        self.algo = algo
        self.units_per_block = units_per_block
        self.grid_sync = grid_sync
        self.split_k = split_k
        self.rows_per_thread = rows_per_thread
        self.last_plan = None
        self.last_forward_plan = None
        self.poison = bool(poison)
        self.last_algo = None
        self._cp = _cupy()
        self.xp = self._cp if self._cp is not None else np
        self._tls = threading.local()          # .stream: the use_stream stream, per thread

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

    def _zeros(self, n, dtype):
        return self._from_host(np.zeros(max(int(n), 1), dtype))

    def _state(self, s, B, H, dtype, T):
        """hs-like buffer (T+1, B, H) with slot 0 = s (zeros if None), rest poisoned/empty."""
        if self._cp is not None:
            buf = self._empty((T + 1) * B * H, dtype)
            buf[:B * H] = 0 if s is None else self._cp.asarray(s, dtype).ravel()
            return buf
        host = np.full((T + 1) * B * H, np.nan if self.poison else 0, dtype)
        host[:B * H] = 0 if s is None else np.asarray(s, dtype).ravel()
        return self._from_host(host)

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
        (opt-in maximum on a GPU, 227 KiB on an H100; 48 KiB in the simulator) minus the
        static VT tile."""
        limit = SMEM_DYN_LIMIT
        if not K.SIMULATOR:
            try:
                limit = max(limit, int(cuda.get_current_device().MAX_SHARED_MEMORY_PER_BLOCK_OPTIN))
            except Exception:
                pass
        return limit - K.VT * itemsize - 1024

    def _plan(self, G, B, H, itemsize, rb=1):
        """('step', None) or ('persistent', (J, nblocks, threads, smem_bytes, grid, KS)).

        rb: rows per thread (register blocking; the forward kernel's RB, 1 for backward).

        J (units per block) is the largest that fits the shared-memory budget and 384
        threads. J = H (one block, no grid sync) is kept when the step is small
        (B*G*H*H <= SINGLE_BLOCK_FMAS; always in the simulator); otherwise J is capped at
        ceil(H / #SMs) so the cooperative grid spreads over the whole GPU;
        KS (threads per unit's dot product) is the largest power of two <= 32 that keeps
        ceil(B/RB)*J*KS <= 384 threads and the partial sums inside the budget (1 in the simulator,
        where every thread costs ~0.2 ms, unless split_k is given).
        """
        if self.algo == "step":
            return "step", None
        budget = self._smem_budget(itemsize)
        per_unit = (G * H + 1) * itemsize
        groups = -(-B // rb)                       # row groups of rb rows
        J = min(budget // per_unit, MAX_THREADS // groups, H)
        if self.units_per_block is not None:
            J = min(J, int(self.units_per_block))
        if J < 1:
            return "step", None
        single = J == H and self.grid_sync is not True and (
            K.SIMULATOR or self.grid_sync is False or self.units_per_block is not None
            or B * G * H * H <= SINGLE_BLOCK_FMAS)
        if not single and self.units_per_block is None and not K.SIMULATOR:
            nsm = cuda.get_current_device().MULTIPROCESSOR_COUNT
            J = max(1, min(J, -(-H // nsm)))      # spread the units over every SM
        nblk = -(-H // J)
        J = -(-H // nblk)
        if self.split_k is not None:
            KS = int(self.split_k)
        elif K.SIMULATOR:
            KS = 1
        else:
            KS = 32                                # >= 8 inputs per thread
            while KS > 1 and (groups * J * KS > MAX_THREADS or KS > max(1, H // 8)):
                KS //= 2
        while True:
            threads = -(-(groups * J * KS) // 32) * 32
            smem = (J * (G * H + 1) + (4 * rb * threads if KS > 1 else 0)) * itemsize
            if smem <= budget or KS == 1:
                break
            KS //= 2
        if threads > MAX_THREADS or smem > budget:
            return "step", None
        grid = nblk > 1 if self.grid_sync is None else bool(self.grid_sync)
        if nblk > 1 and not grid:
            return "step", None
        return "persistent", (J, nblk, threads, smem, grid, KS)

    def _compiled(self, kern, args):
        return kern.compile(tuple(kern.typeof_pyval(a) for a in args))

    def _prepare_gpu(self, kern, args, nblk, threads, smem, grid, static):
        """On a GPU: opt in to > 48 KiB of dynamic shared memory, and check that a
        cooperative grid of nblk blocks can be co-resident. False = use the step kernel."""
        try:
            compiled = self._compiled(kern, args)
            if threads > compiled._codelibrary.get_cufunc().attrs.maxthreads:
                return False
            if smem + static > SMEM_DYN_LIMIT:
                from numba.cuda.cudadrv.driver import binding, driver
                cufunc = compiled._codelibrary.get_cufunc()
                attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                driver.cuKernelSetAttribute(attr, int(smem), cufunc.handle, cufunc.device.id)
            if grid:
                return nblk <= compiled.max_cooperative_grid_blocks(threads, smem)
            return True
        except Exception:
            return False

    def _run_persistent(self, kern_factory, cell, dtype, plan, args_fn):
        J, nblk, threads, smem, grid, KS = plan
        kern = kern_factory(cell, dtype, grid)
        args = args_fn(J, KS)
        if K.SIMULATOR:
            if grid and nblk > kern.overloads[None].max_cooperative_grid_blocks(threads):
                return False
        elif not self._prepare_gpu(kern, args, nblk, threads, smem, grid,
                                   K.VT * np.dtype(dtype).itemsize):
            return False
        try:
            self._launch(kern, nblk, threads, smem)(*args)
        except Exception:
            if K.SIMULATOR:
                raise
            return False      # e.g. a launch-resource error on an unusual GPU: step instead
        self.last_algo = "persistent-grid" if grid else "persistent-1block"
        self.last_plan = dict(J=J, blocks=nblk, threads=threads, smem=smem, KS=KS)
        return True

    def _run_step(self, kern, B, H, steps, args_fn):
        """The step kernel once per t in ``steps``, args_fn(t) its arguments; block
        (min(32, H), BY) units x rows, BY = min(B, 4) (B in the simulator)."""
        bx = min(32, H)
        by = min(B, 4 if not K.SIMULATOR else B, max(1, 256 // bx))
        launch = self._launch(kern, ((H + bx - 1) // bx, (B + by - 1) // by), (bx, by))
        for t in steps:
            launch(*args_fn(t))
        self.last_algo = "step"
        self.last_plan = None

    # ------------------------------------------------------------------ forward
    def forward(self, cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths):
        spec = cell_spec(cell)
        T, B, I = (int(s) for s in x.shape)
        H = int(w_hh.shape[1])
        G = spec.n_gates
        GH = G * H
        dtype = np.dtype(x.dtype)
        xd = self._dev(x, dtype)
        wih = self._dev(w_ih, dtype)
        whh = self._dev(w_hh, dtype)
        wt = self._dev(self.xp.ascontiguousarray(w_hh.T), dtype)
        bih = self._dev(b_ih, dtype)
        bhh = self._dev(b_hh, dtype) if b_hh is not None else self._zeros(GH, dtype)
        lens_host = np.full(B, T, np.int32) if lengths is None else np.asarray(lengths, np.int32)
        lens = self._from_host(lens_host)

        gx = self._mm(dtype, xd, (T * B, I), False, wih, (GH, I), True, bih)
        hs = self._state(h0, B, H, dtype, T)
        cs = self._state(c0, B, H, dtype, T) if spec.has_cell_state else self._zeros(1, dtype)
        act = (self._empty(T * B * K.NSLOT * H, dtype) if cell in ("lstm", "gru")
               else self._zeros(1, dtype))
        out = self._empty(T * B * H, dtype)

        rb = self.rows_per_thread or (1 if K.SIMULATOR else K.PERSIST_RB)
        rb = max(1, min(int(rb), B))
        algo, plan = self._plan(G, B, H, dtype.itemsize, rb)
        bufs = self._nb(gx, wt, bhh, lens, hs, cs, act, out)
        ran = False
        if algo == "persistent":
            ran = self._run_persistent(
                lambda c, d, g: K.fwd_persist_kernel(c, d, g, rb), cell, dtype, plan,
                lambda J, KS: (T, B, H, J, KS) + bufs)
            if ran:
                self.last_plan["RB"] = rb
        self.last_forward_plan = self.last_plan if ran else None
        if not ran:
            self._run_step(K.fwd_step_kernel(cell, dtype), B, H, range(T),
                           lambda t: (t, T, B, H) + bufs)

        out_x = self._out(out, 0, (T, B, H))
        h_n = self._out(hs, T * B * H, (B, H))
        c_n = self._out(cs, T * B * H, (B, H)) if spec.has_cell_state else None
        tape = dict(cell=spec.name, T=T, B=B, I=I, H=H, G=G, dtype=dtype, x=xd, w_ih=wih,
                    w_hh=whh, lens=lens, hs=hs, cs=cs, act=act,
                    has_bias=(b_ih is not None, b_hh is not None), algo=self.last_algo)
        return out_x, h_n, c_n, tape

    # ------------------------------------------------------------------ backward
    def backward(self, tape, dout, dh_n, dc_n, truncate):
        cell, T, B, I, H, G, dtype = (tape[k] for k in ("cell", "T", "B", "I", "H", "G", "dtype"))
        GH = G * H
        has_c = cell == "lstm"
        trunc = 0 if truncate is None else int(truncate)
        dd = self._dev(dout, dtype)
        dhn = self._dev(dh_n, dtype) if dh_n is not None else self._zeros(B * H, dtype)
        dcn = (self._dev(dc_n, dtype) if dc_n is not None else self._zeros(B * H, dtype)) \
            if has_c else self._zeros(1, dtype)
        dgh = self._empty(T * B * GH, dtype)
        dgx = self._empty(T * B * GH, dtype) if cell == "gru" else dgh
        dh0 = self._empty(B * H, dtype)
        dc0 = self._empty(B * H, dtype) if has_c else self._zeros(1, dtype)
        w, lens, hs, cs, act = tape["w_hh"], tape["lens"], tape["hs"], tape["cs"], tape["act"]

        algo, plan = self._plan(G, B, H, dtype.itemsize)
        ran = False
        if algo == "persistent":
            bufs = self._nb(dgh, dgx, w, lens, hs, cs, act, dd, dhn, dcn, dh0, dc0)
            ran = self._run_persistent(K.bwd_persist_kernel, cell, dtype, plan,
                                       lambda J, KS: (T, B, H, J, KS, trunc) + bufs)
        if not ran:
            hcar = self._empty(B * H, dtype)
            ccar = self._empty(B * H, dtype) if has_c else self._zeros(1, dtype)
            a = self._nb(dgh, dgx, w, lens, hs, cs, act, dd, hcar, ccar, dhn, dcn, dh0, dc0)
            self._run_step(K.bwd_step_kernel(cell, dtype), B, H, range(T - 1, -2, -1),
                           lambda t: (t, T, B, H, trunc) + a)

        TB = T * B
        dw_hh = self._mm(dtype, dgh, (TB, GH), True, hs, (TB, H), False)
        dw_ih = self._mm(dtype, dgx, (TB, GH), True, tape["x"], (TB, I), False)
        dx = self._mm(dtype, dgx, (TB, GH), False, tape["w_ih"], (GH, I), False)
        has_b_ih, has_b_hh = tape["has_bias"]
        db_ih = self._colsum(dtype, dgx, TB, GH) if has_b_ih else None
        db_hh = self._colsum(dtype, dgh, TB, GH) if has_b_hh else None
        o = self._out
        return DirectionGrads(
            dx=o(dx, 0, (T, B, I)), dh0=o(dh0, 0, (B, H)),
            dc0=o(dc0, 0, (B, H)) if has_c else None,
            dw_ih=o(dw_ih, 0, (GH, I)), dw_hh=o(dw_hh, 0, (GH, H)),
            db_ih=o(db_ih, 0, (GH,)) if db_ih is not None else None,
            db_hh=o(db_hh, 0, (GH,)) if db_hh is not None else None)
