"""Python source for a cell's scalar forward and backward, compiled for each target.

From a traced graph and its derivative (gpurnn.cells.graph, .autodiff) this writes two
straight-line functions, one statement per node, in forward order:

    forward(xg0..xg{G-1}, hg0..hg{G-1}, s0..s{S-1})  -> (n0..n{S-1}, v0..v{V-1})
        new states n, then the V values the backward needs (spec.saves)
    backward(d0..d{S-1}, v0..v{V-1}, s0..s{S-1}, n0..n{S-1})
        -> (dxg0..dxg{G-1}, dhg0..dhg{G-1}, ds0..ds{S-1})
        d = dL/d(new states); ds = the direct part of dL/d(previous states)

Every operation is a call into a namespace the target supplies, and every constant a
name (``_c0``, ``_c1``, ...) bound to a number of the target's dtype, so a float32
kernel never meets a Python float (which would promote it to float64 on the GPU):

    target "numpy"   the namespace of ``array_namespace(dtype)``: NumPy, elementwise over
                     arrays (the numpy backend's generic path; tests)
    "cpu" / "cuda"   ``scalar_namespace(dtype, ...)``, built by each backend with its own
                     exp/tanh/log and its compiler (numba.njit / cuda.jit(device=True))

``compile_functions`` execs the source in that namespace (registered with linecache, so
tracebacks and debuggers show the generated lines) and returns the two functions, which
the backends wrap into their kernels.
"""
import linecache

import numpy as np

_BINARY_OPERATOR = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


class _Writer:
    def __init__(self, names):
        self.names = dict(names)      # node id -> Python expression (a variable name)
        self.lines = []
        self.consts = {}              # value -> constant name

    def const(self, value):
        if value not in self.consts:
            self.consts[value] = f"_c{len(self.consts)}"
        return self.consts[value]

    def ref(self, node):
        if node.is_const:
            return self.const(node.value)
        return self.names[node.id]

    def emit(self, node):
        """Make ``node`` available, emitting it (and what it needs) if it is not yet."""
        if node.is_const or node.id in self.names:
            return
        stack = [node]
        while stack:                      # iterative: deep cells must not hit recursion limits
            top = stack[-1]
            pending = [a for a in top.args if not a.is_const and a.id not in self.names]
            if pending:
                for a in pending:
                    if a.op == "input":
                        raise AssertionError(f"codegen: {a!r} is not an argument here")
                stack.extend(pending)
                continue
            stack.pop()
            if top.id in self.names:
                continue
            name = f"t{top.id}"
            self.lines.append(f"    {name} = {self._expr(top)}")
            self.names[top.id] = name

    def _expr(self, node):
        args = [self.ref(a) for a in node.args]
        if node.op in _BINARY_OPERATOR:
            return f"{args[0]} {_BINARY_OPERATOR[node.op]} {args[1]}"
        if node.op == "neg":
            return f"-{args[0]}"
        if node.op == "pow":
            n = node.value
            product = " * ".join([args[0]] * abs(n))
            return product if n > 0 else f"{self.const(1.0)} / ({product})"
        return f"{node.op}({', '.join(args)})"


def forward_source(spec, name="forward"):
    """Source of the forward function (see module doc)."""
    G, S = spec.n_gates, spec.n_states
    inputs = spec.graph_inputs
    params = ([f"xg{k}" for k in range(G)] + [f"hg{k}" for k in range(G)] +
              [f"s{k}" for k in range(S)])
    w = _Writer({n.id: p for n, p in zip(inputs["xg"] + inputs["hg"] + inputs["s"], params)})
    results = list(spec.graph_outputs) + list(spec.derivative.saves)
    for node in results:
        w.emit(node)
    return _function(name, params, w, [w.ref(n) for n in results])


def backward_source(spec, name="backward"):
    """Source of the backward function (see module doc)."""
    G, S, d = spec.n_gates, spec.n_states, spec.derivative
    inputs = spec.graph_inputs
    names = {}
    for k, node in enumerate(d.dn):
        names[node.id] = f"d{k}"
    for k, node in enumerate(d.saves):
        names[node.id] = f"v{k}"
    for k, node in enumerate(inputs["s"]):
        names.setdefault(node.id, f"s{k}")
    for k, node in enumerate(spec.graph_outputs):
        names.setdefault(node.id, f"n{k}")
    params = ([f"d{k}" for k in range(S)] + [f"v{k}" for k in range(len(d.saves))] +
              [f"s{k}" for k in range(S)] + [f"n{k}" for k in range(S)])
    w = _Writer(names)
    results = d.dxg + d.dhg + d.ds
    for node in results:
        w.emit(node)
    return _function(name, params, w, [w.ref(n) for n in results])


def _function(name, params, writer, returns):
    lines = [f"def {name}({', '.join(params)}):"] + writer.lines
    lines.append(f"    return ({', '.join(returns)},)")
    return "\n".join(lines) + "\n", writer.consts


def exec_source(src, namespace, filename, name):
    """Exec generated ``src`` in ``namespace`` under a linecache-registered ``filename`` (so
    tracebacks and debuggers show the generated lines); returns ``namespace[name]``."""
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    exec(compile(src, filename, "exec"), namespace)
    return namespace[name]


def compile_functions(spec, namespace_for_dtype, dtype, target):
    """(forward, backward) of ``spec`` for one target and dtype, as plain Python functions
    whose globals are ``namespace_for_dtype`` plus the typed constants."""
    dt = np.dtype(dtype).type
    functions = []
    for make in (forward_source, backward_source):
        src, consts = make(spec)
        namespace = dict(namespace_for_dtype)
        namespace.update({n: dt(v) for v, n in consts.items()})
        # a deterministic name: Numba's disk cache keys on the code object (tests/test_cpu_*)
        filename = f"<gpurnn cell {spec.name} {spec.key} {make.__name__[:-7]} {target} {np.dtype(dtype).name}>"
        functions.append(exec_source(src, namespace, filename, make.__name__[:-7]))
    return tuple(functions)


# ----------------------------------------------------------------------- namespaces
def scalar_namespace(dtype, exp, tanh, log, log1p, jit=None):
    """Scalar implementations of every graph op for a compiled target. ``exp``, ``tanh``,
    ``log``, ``log1p``: the target's fastest primitives for ``dtype``; ``jit`` is applied
    to each helper as it is defined (so later helpers call compiled ones)."""
    dt = np.dtype(dtype).type
    zero, half, one = dt(0), dt(0.5), dt(1)
    compiled = jit if jit is not None else (lambda fn: fn)

    @compiled
    def sigmoid(x):
        return one / (one + exp(-x))

    @compiled
    def softplus(x):        # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow
        m = x if x > zero else zero
        return m + log1p(exp(-(x if x > zero else -x)))

    @compiled
    def relu(x):
        return x if x > zero else zero

    @compiled
    def maximum(a, b):
        return a if a > b else b

    @compiled
    def minimum(a, b):
        return a if a < b else b

    @compiled
    def gt(a, b):
        return one if a > b else zero

    @compiled
    def hstep(a, b):
        return one if a > b else (half if a == b else zero)

    return dict(sigmoid=sigmoid, softplus=softplus, relu=relu, maximum=maximum, minimum=minimum,
                gt=gt, hstep=hstep, exp=exp, tanh=tanh, log=log)


def array_namespace(dtype):
    """NumPy implementations of every graph op, elementwise, results in ``dtype``."""
    from .. import ops
    dt = np.dtype(dtype).type
    zero, half, one = dt(0), dt(0.5), dt(1)
    return dict(
        sigmoid=ops.sigmoid, tanh=ops.tanh, exp=ops.exp, log=ops.log, softplus=ops.softplus,
        relu=ops.relu, maximum=ops.maximum, minimum=ops.minimum,
        gt=lambda a, b: np.where(a > b, one, zero),
        hstep=lambda a, b: np.where(a > b, one, np.where(a == b, half, zero)))
