"""The "cpu" backend: Numba JIT recurrence kernels between big BLAS GEMMs, split over threads.

Per layer-direction (shapes as gpurnn.reference: x (T, B, I), W_ih (G*H, I), W_hh (G*H, H)):

  forward   gx  = X W_ih^T                      GEMM over all T*B rows (kernels.gemm);
                                                 token ids x (T, B): a gather of W_ih's columns
            forward_part(...)                    per step h @ W_hh^T + njit fused cell (+ b_ih + b_hh)

  backward  backward_part(...)                   reverse steps, njit fused cell + dgh W_hh
            dX = dgx W_ih, dW_ih = dgx^T X, dW_hh = dgh^T H_prev (GEMMs), db = column sums
            (no dX with need_dx=False or token ids; their dW_ih is a scatter-add, cpu.tokens)
  "units" split (B <= 8): each part does these GEMMs for its own units inside its loop call
  where it can (tape["plan"]["gemms"]: "parts", else "rows" and why; _njit_gemms_why)

The GEMMs go to MKL where one is found, the layer is float32 and the CPU is Intel's
(gpurnn.cpu.mkl: the per-step products by its packed GEMM, the big ones by its plain one,
each part on one thread; on other CPUs MKL runs a generic path half as fast as OpenBLAS),
else to NumPy's OpenBLAS; tape["plan"]["products"] says which ran and why.

Any registered cell (gpurnn.cells): its generated scalar forward/backward are fused into
the row functions (gpurnn.cpu.rows). The tape keeps the cell's V saved values (the first G
in the gx buffer, overwritten in place; the rest in ``aux`` (T, B, (V-G)*H)) and the state
sequences ``st`` (S, T+1, B, H); ``tape_nbytes`` sums them. LSTM saves i, f, g, o; GRU r,
z, n and its recurrent candidate part; the Elman RNNs nothing (their backward needs only h).

Threading (kernels_docs/cpu.md): ``threads`` (default: numba.get_num_threads(), at most the
cores this process may use) parts, one per thread, each running its share of the GEMMs and
of the recurrence (kernels.Plan: hidden units for B <= 8, batch rows above), with BLAS held
to one thread per part while they run, so no BLAS worker threads are woken. One BLAS
library, NumPy's: no njit code calls np.dot, which would use SciPy's bundled OpenBLAS (two
pools of busy-waiting workers on the same cores cost the training step 2.3x at 2 threads,
106 vs 46 ms, RESULTS_cpu.md Tuning log 8). tape["plan"] (and the backward's
DirectionGrads.plan) says how each call split.
"""
import numpy as np

from ..contract import DirectionGrads, HostBackend, decline
from ..tokens import is_token_ids

GEMMS = ("auto", "mkl", "openblas")


class CpuBackend(HostBackend):
    """Numba CPU backend; its configuration is its constructor's arguments.

    poison      fill every buffer the kernels must write with NaN before they run (tests
                use it so that an element left unwritten cannot pass)
    threads     how many threads one layer call may use (None: numba.get_num_threads(),
                capped at the cores this process may run on; NUMBA_NUM_THREADS or
                numba.set_num_threads change it for every layer)
    split       kernels.SplitRules: when a call splits over threads
    gemm        the per-step products of the "rows" recurrence (B > 8): "mkl" (MKL's packed
                GEMM, gpurnn.cpu.mkl; float32; an error where there is none), "openblas"
                (NumPy's BLAS), "auto" (mkl where it can run and the CPU is Intel's; on
                other CPUs openblas, the reason in tape["plan"]["chosen"]; where MKL cannot
                run, openblas with the reason in tape["plan"]["declined"], and
                GPURNN_STRICT=1 raises FallbackError)
    transposed_forward  the forward's per-step OpenBLAS product as ghT = W_hh @ h^T,
                measured faster for LSTM B=32 H=256 and B=64 H=512 once the copies were
                tiled (Tuning log, benchmarks/RESULTS_cpu.md); False: h @ W_hh^T directly
                (kept for comparisons; the tests run both). Where OpenBLAS's small-matrix
                kernels run (openblas.small_block), both directions' products go as
                h @ W_hh^T in column blocks instead, and this flag does not apply
    """
    name = "cpu"
    dtypes = ("float32", "float64")
    fold_hooks = True          # forward(gx0=), backward(need_dgates=): gpurnn.contract

    def __init__(self, poison=False, threads=None, split=None, transposed_forward=True,
                 gemm="auto"):
        from .kernels import DEFAULT_SPLIT
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads: expected None or an int >= 1, got {threads!r}")
        if gemm not in GEMMS:
            raise ValueError(f"gemm: expected one of {', '.join(map(repr, GEMMS))}, got {gemm!r}")
        self.gemm = gemm
        self.poison = bool(poison)
        self.threads = threads
        self.split = DEFAULT_SPLIT if split is None else split
        self.transposed_forward = bool(transposed_forward)

    def _threads(self):
        from .parallel import recurrence_threads
        return recurrence_threads() if self.threads is None else self.threads

    def is_available(self):
        try:
            import numba  # noqa: F401
        except ImportError:
            return False
        return True

    def matmul(self, a, b):
        """a @ b, its rows split over this backend's threads, one-thread BLAS per part
        (kernels.split_matmul): the contract's matmul for code next to the layers."""
        from .kernels import split_matmul
        return split_matmul(a, b, self.threads, self._products(np.result_type(a, b))[0])

    def run_rows(self, n, fn):
        """fn(r0, r1) on shares of the rows 0..n-1 over this backend's threads, one-thread
        BLAS in each (kernels.split_rows): the contract's run_rows."""
        from .kernels import split_rows
        return split_rows(n, fn, self.threads)

    def compute_scope(self):
        """BLAS held to one thread while a model step runs (parallel.single_threaded_blas)."""
        from .parallel import single_threaded_blas
        return single_threaded_blas()

    def _empty(self, shape, dtype):
        from .kernels import aligned_empty      # cache-line aligned rows vectorise better
        buf = aligned_empty(shape, dtype)
        if self.poison:
            buf.fill(np.nan)
        return buf

    def _products(self, dtype):
        """(library, declined, chosen) for a float ``dtype`` layer: library "mkl" or
        "openblas"; declined: why MKL could not run where it was wanted (a fallback), or
        None; chosen: why "auto" preferred OpenBLAS although MKL could run, or None."""
        from . import mkl
        if self.gemm == "openblas" or (self.gemm == "auto" and mkl.turned_off()):
            return "openblas", None, None              # the user's choice
        ok, text = mkl.status()
        why = None if ok else text
        if ok and dtype != np.float32:
            why = f"{dtype}: MKL's packed GEMM here is float32 only"
        if why is not None:
            if self.gemm == "mkl":
                raise RuntimeError(f"gemm='mkl': cannot run: {why}")
            return "openblas", why, None
        if self.gemm == "auto":
            fast, slower = mkl.fast_here()
            if not fast:
                return "openblas", None, slower        # the faster library here, not a fallback
        return "mkl", None, None

    def products_path(self, dtype):
        """One line: the per-step products' library for a ``dtype`` "rows" layer, where its
        time loop runs and why (``gpurnn info``'s "cpu GEMM path")."""
        library, declined, chosen = self._products(np.dtype(dtype))
        loop, slow = self._loop(library)
        why = "; ".join(filter(None, [declined and f"MKL declined: {declined}", chosen,
                                      slow and f"loop in Python: {slow}"]))
        return f"{library}, time loop in {loop}" + (f" ({why})" if why else "")

    @staticmethod
    def pool_path():
        """One line: the threads a split layer's parts 1.. run on, from this thread, and why
        (``gpurnn info``'s "cpu thread pool"; parallel.pool_choice)."""
        from .parallel import pool_choice, pool_mode
        pool, why_not = pool_choice()
        mode = pool_mode()
        if pool == "openmp":
            return f"the calling thread's OpenMP team (GPURNN_CPU_POOL={mode})"
        if why_not:
            return f"gpurnn's own (not the OpenMP team: {why_not})"
        if mode == "own":
            return "gpurnn's own (GPURNN_CPU_POOL=own)"
        return ("gpurnn's own here; torch's OpenMP team in a process that imports torch "
                "(GPURNN_CPU_POOL=auto)")

    @staticmethod
    def _loop(products):
        """(loop, why not njit): where the per-step products are OpenBLAS's, their time loop
        runs in njit if NumPy's OpenBLAS can be called from there (cpu.openblas), else in
        Python (a fallback: the reason goes in the plan)."""
        if products != "openblas":
            return "njit", None
        from . import openblas
        ok, text = openblas.status()
        return ("njit", None) if ok else ("python", text)

    @staticmethod
    def _plan_record(plan, declined, chosen, slow_loop=None):
        """What tape["plan"] says: the split, the products and, for a "rows" split (the only
        one MKL is for), why MKL was declined (a fallback, which GPURNN_STRICT=1 turns into
        an error) or why OpenBLAS was chosen over it."""
        record = {"split": plan.describe(), "products": plan.products,
                  "pool": plan.pool}          # None: one part, on the caller
        if plan.kind == "units":              # where the GEMMs with X and W_ih ran
            record["gemms"] = plan.gemms + (f" ({plan.gemms_why})" if plan.gemms_why else "")
            if plan.gemms_declined:
                decline(f"gpurnn cpu: the GEMMs around the loop split by rows ({plan.gemms_why})")
        if plan.kind == "rows" and plan.products == "openblas":
            record["loop"] = plan.loop
            rows = plan.rows(0)[1] - plan.rows(0)[0]     # part 0's; the others' differ by <= 1
            blocks = (plan.small_block(rows, plan.H), plan.small_block(rows, plan.GH))
            if any(blocks):
                record["blocks"] = {"forward": blocks[0], "backward": blocks[1]}
            if slow_loop is not None:
                record["declined"] = "openblas from njit: " + slow_loop
                decline(f"gpurnn cpu: the per-step OpenBLAS products run from a Python loop "
                        f"({slow_loop})")
        if plan.kind == "rows" and declined is not None:
            record["declined"] = "; ".join(filter(None, ["mkl: " + declined,
                                                          record.get("declined")]))
            decline(f"gpurnn cpu: per-step products by OpenBLAS, not MKL ({declined})")
        elif plan.kind == "rows" and chosen is not None:
            record["chosen"] = "openblas: " + chosen
        return record

    def _state(self, value, shape, dtype):
        """A fresh (B, H) buffer holding ``value`` (None = zeros)."""
        buf = self._empty(shape, dtype)
        buf[...] = 0 if value is None else value
        return buf

    # ------------------------------------------------------------------ forward
    def forward(self, spec, x, w_ih, w_hh, b_ih, b_hh, state0, lengths, gx0=None):
        from .kernels import Plan, recurrence_kernels, share, transpose
        x, w_ih, w_hh = (np.ascontiguousarray(a) for a in (x, w_ih, w_hh))
        T, B = x.shape[:2]
        GH, H = w_hh.shape
        S, V, G = spec.n_states, spec.n_saves, spec.n_gates
        dtype = w_hh.dtype
        steps = np.full(B, T, np.int64) if lengths is None else np.ascontiguousarray(lengths, np.int64)
        products, declined, chosen = self._products(dtype)
        if T == 1 and products == "mkl" and self.gemm == "auto":   # (sampling, step by step)
            products, chosen = "openblas", "one step: MKL would pack W_hh for one product"
        loop, slow_loop = self._loop(products)
        plan = Plan(T, B, H, GH, self._threads(), self.split, products, loop)

        gx = self._empty((T, B, GH), dtype)        # X W_ih^T, then saves 0..G-1 in place
        bias = np.zeros((2, GH), dtype)            # b_ih, b_hh: added in the fused cell pass
        for row, vector in enumerate((b_ih, b_hh)):
            if vector is not None:
                bias[row] = vector
        st = self._empty((S, T + 1, B, H), dtype)  # state sequences; st[:, 0] = state0
        for s, value in enumerate(state0):
            st[s, 0] = 0 if value is None else value
        aux = self._empty((T, B, max(V - G, 0) * H), dtype)   # saves G..V-1
        out = self._empty((T, B, H), dtype)
        w_hh_t = None                              # W_hh^T for BLAS-step products (kept in the
        if plan.products == "openblas":            # tape for the backward's)
            w_hh_t = self._empty((H, GH), dtype)
        forward_part, _ = recurrence_kernels(spec, dtype.name)
        prepare, project = self._input_projection(x, w_ih, gx.reshape(T * B, GH), plan)
        if gx0 is not None:                        # the contract's hook: gx[0] += gx0
            gx0 = np.ascontiguousarray(gx0, dtype).reshape(B, GH)
        x2 = self._gemms_in_parts(plan, x, gx0, dtype)

        def part(p):
            if plan.gemms == "parts":                          # all in one njit call
                forward_part(plan, p, gx, w_hh, w_hh_t, bias, steps, st, aux, out,
                             self.transposed_forward, x2, w_ih)
                return
            # The transposes run in part 0 while the other parts' threads wake (0.2-0.5 ms
            # on a VM after an idle pause, RESULTS_train.md session 9), not before them.
            if p == 0 and w_hh_t is not None:
                transpose(w_hh, w_hh_t)                        # read after the meet below
            if prepare is not None:                            # W_ih^T for the gather
                if p == 0:
                    prepare()
                plan.meet(p)
            project(p)                                         # gx = X W_ih^T, by rows
            if gx0 is not None:                                # this part's rows of step 0
                r0, r1 = share(T * B, p, plan.nparts)
                r1 = min(r1, B)
                if r0 < r1:
                    gx[0, r0:r1] += gx0[r0:r1]
            plan.meet(p)
            forward_part(plan, p, gx, w_hh, w_hh_t, bias, steps, st, aux, out,
                         self.transposed_forward, x2[:0], w_ih)       # gx is written
        plan.run(part)

        tape = dict(spec=spec, x=x, x2=x2, w_ih=w_ih, w_hh=w_hh, w_hh_t=w_hh_t, lengths=steps,
                    acts=gx if V else np.empty((T, B, 0), dtype),   # a cell saving nothing
                    st=st, aux=aux, plan_split=plan,                # keeps no gx
                    plan=self._plan_record(plan, declined, chosen, slow_loop),
                    has_bias=(b_ih is not None, b_hh is not None))
        return out, tuple(st[s, T].copy() for s in range(S)), tape

    # ------------------------------------------------------------------ backward
    def backward(self, tape, dout, dstate_n, truncate, need_dx=True, need_dgates=False):
        from .kernels import recurrence_kernels
        spec, x, w_ih, w_hh, st = (tape[k] for k in ("spec", "x", "w_ih", "w_hh", "st"))
        T, B = x.shape[:2]
        GH, H = w_hh.shape
        I = w_ih.shape[1]
        dtype = w_hh.dtype
        need_dx = need_dx and not is_token_ids(x)        # ids have no gradient

        ds = self._empty((spec.n_states, B, H), dtype)      # carried dL/d state
        for s, value in enumerate(dstate_n):
            ds[s] = 0 if value is None else value
        dgx = self._empty((T, B, GH), dtype)
        dgh = dgx if spec.all_tied else self._empty((T, B, GH), dtype)
        dx = self._empty((T, B, I), dtype) if need_dx else None
        dw_ih = self._empty((GH, I), dtype)
        dw_hh = self._empty((GH, H), dtype)
        dout = np.ascontiguousarray(dout, dtype)
        truncate = 0 if truncate is None else int(truncate)
        plan = tape["plan_split"].for_backward(dtype)
        _, backward_part = recurrence_kernels(spec, dtype.name)
        dgx2, dgh2 = dgx.reshape(T * B, GH), dgh.reshape(T * B, GH)
        h_prev2 = st[0, :T].reshape(T * B, H)
        input_weight_grad = self._input_weight_grad(x, dgx2, dw_ih, plan)
        # Which GEMMs the "units" parts run in their loop call (an array with no rows: none)
        why, _ = self._njit_gemms_why(plan)      # a fallback was reported by the forward
        hh_in_parts = why is None
        x_in_parts = hh_in_parts and not is_token_ids(x)      # ids: the scatter-add, below
        x2 = tape["x2"] if x_in_parts else tape["x2"][:0]
        dx2 = dx.reshape(T * B, I) if need_dx and x_in_parts else x2[:0]
        gemms = ("parts" if x_in_parts else "parts: dW_hh; dW_ih: the scatter-add after"
                 if hh_in_parts else f"rows ({why})")

        def part(p):
            backward_part(plan, p, tape["acts"], st, tape["aux"], w_hh, tape["w_hh_t"],
                          tape["lengths"], truncate, dout, ds, dgx, dgh, x2,
                          h_prev2 if hh_in_parts else h_prev2[:0], w_ih, dx2, dw_ih, dw_hh)
            if x_in_parts:                            # the weight GEMMs and dX ran in there
                return
            plan.meet(p)
            if need_dx:
                plan.gemm(dgx2, w_ih, dx.reshape(T * B, I), p)       # dX = dG_x W_ih
            input_weight_grad(p)                                     # dW_ih = dG_x^T X
            if not hh_in_parts:
                plan.gemm(dgh2.T, h_prev2, dw_hh, p)                 # dW_hh = dG_h^T H_prev
        plan.run(part)
        has_b_ih, has_b_hh = tape["has_bias"]
        db_ih = dgx2.sum(0) if has_b_ih else None
        db_hh = None
        if has_b_hh:    # every gate tied: dgh is dgx, whose column sums db_ih already holds
            db_hh = db_ih.copy() if dgh is dgx and db_ih is not None else dgh2.sum(0)
        return DirectionGrads(dx=dx, dstate0=tuple(ds), dw_ih=dw_ih, dw_hh=dw_hh,
                              db_ih=db_ih, db_hh=db_hh,
                              plan={**tape["plan"], "split": plan.describe(), "pool": plan.pool,
                                    **({"gemms": gemms} if plan.kind == "units" else {})},
                              dgates=dgh if need_dgates else None)

    # ------------------------------------------------------------------ input side
    @staticmethod
    def _njit_gemms_why(plan):
        """(why not, declined). why is None where each "units" part can do its own units'
        GEMMs inside its loop call (NumPy's OpenBLAS from njit): X W_ih^T before the loop,
        dW_hh, dW_ih and its rows of dX after it, so that the parts neither meet around the
        loop nor take the GIL between phases; else why not (the caller's GEMMs split by
        rows, the parts meeting around them). declined: the reason is a fast path that
        could not run (that OpenBLAS is not callable from njit), not the plan's shape or
        library: a fallback, which the plan record reports (decline)."""
        from . import openblas
        if plan.kind != "units":
            return "rows split", False
        if plan.library != "openblas":
            return f"GEMMs by {plan.library}", False
        ok, text = openblas.status()
        return (None, False) if ok else ("openblas from njit: " + text, True)

    def _gemms_in_parts(self, plan, x, gx0, dtype):
        """Sets plan.gemms for the forward: "parts" (X W_ih^T by each part, _njit_gemms_why)
        or "rows", with why in plan.gemms_why. Returns X as (T*B, I) (token ids: an empty
        (0, 0) array)."""
        T, B = x.shape[:2]
        why, declined = self._njit_gemms_why(plan)
        if is_token_ids(x):
            why, declined = "token ids (a gather of W_ih^T rows)", False
        elif why is None and gx0 is not None:
            why = "gx0 hook"
        plan.gemms, plan.gemms_why = ("rows", why) if why else ("parts", None)
        plan.gemms_declined = declined
        return np.empty((0, 0), dtype) if is_token_ids(x) else x.reshape(T * B, -1)

    # part(p) functions for the GEMMs with X, split as the plan's parts are.
    # x: (T, B, I) floats, or (T, B) int64 token ids (one-hot rows; gpurnn.tokens).
    def _input_projection(self, x, w_ih, gx2, plan):
        """(prepare, project): project(p) writes gx2 (T*B, G*H) = X W_ih^T, part p's rows:
        a GEMM, or for token ids a gather of rows of W_ih^T (one contiguous copy per token,
        cpu.tokens), which prepare() (None for the GEMM) must have written first."""
        from .kernels import share, transpose
        TB, n = gx2.shape[0], plan.nparts
        if not is_token_ids(x):
            x2 = x.reshape(TB, -1)
            return None, lambda p: plan.gemm(x2, w_ih.T, gx2, p)
        from .tokens import gather_rows
        w_ih_t = self._empty(w_ih.shape[::-1], w_ih.dtype)     # (I, G*H): a row per id
        ids = x.reshape(TB)
        return (lambda: transpose(w_ih, w_ih_t),
                lambda p: gather_rows(w_ih_t, ids, gx2, *share(TB, p, n)))

    def _input_weight_grad(self, x, dgx2, dw_ih, plan):
        """Writes dw_ih (G*H, I) = dG_x^T X, this part's share: a GEMM by rows, or for
        token ids the scatter-add by blocks of dW_ih's rows (no races; cpu.tokens)."""
        (TB, GH), n = dgx2.shape, plan.nparts
        if not is_token_ids(x):
            x2 = x.reshape(TB, -1)
            return lambda p: plan.gemm(dgx2.T, x2, dw_ih, p)
        from .kernels import share
        from .tokens import scatter_add_columns
        ids = x.reshape(TB)
        return lambda p: scatter_add_columns(dgx2, ids, dw_ih, *share(GH, p, n))


def tape_nbytes(tape):
    """Bytes the backend allocated and keeps for the backward (x and weights excluded)."""
    return sum(tape[k].nbytes for k in ("acts", "st", "aux"))
