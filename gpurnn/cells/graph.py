"""Tracing a cell's forward into an expression graph (the input of autodiff and codegen).

``trace(name, fn, G, S)`` calls the user's ``fn(xg, hg, state)`` once with symbolic
``Node`` values: ``xg[k]``, ``hg[k]`` (gate k's input / recurrent pre-activation) and
``state[s]``. Arithmetic operators and ``gpurnn.ops`` build nodes; anything else (a
comparison or ``if`` on a value, ``math.*``, ``np.*``, ``float()``) raises
``CellDefinitionError`` naming the cell and the operation, which is what "only ops,
arithmetic and number constants, no branches on values" means in practice.

Nodes are hash-consed inside one Graph (the same operation on the same arguments is the
same node: common subexpressions are shared by construction) and simplified as they are
built (constants folded, x*1, x+0, x*0, --x). The graph is a DAG of these ops:

    input  ('xg', k) | ('hg', k) | ('s', k)        const  a Python float
    add sub mul div neg   pow (constant integer exponent)
    sigmoid tanh exp log softplus relu maximum minimum      (gpurnn.ops)
    gt(a, b) = [a > b]   hstep(a, b) = 1, 1/2, 0 for a >, ==, < b   (derivatives only)
"""
import math
import numbers


class CellDefinitionError(ValueError):
    """A cell definition that gpurnn cannot compile; the message names the cell and why."""


ARITH = ("add", "sub", "mul", "div", "neg", "pow")
UNARY = ("sigmoid", "tanh", "exp", "log", "softplus", "relu")
BINARY = ("maximum", "minimum", "gt", "hstep")
COMMUTATIVE = ("add", "mul", "maximum", "minimum")

_EVAL = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "neg": lambda a: -a, "pow": lambda a, b: a ** b,
    "sigmoid": lambda a: 1.0 / (1.0 + math.exp(-a)), "tanh": math.tanh, "exp": math.exp,
    "log": math.log, "softplus": lambda a: max(a, 0.0) + math.log1p(math.exp(-abs(a))),
    "relu": lambda a: max(a, 0.0), "maximum": max, "minimum": min,
    "gt": lambda a, b: 1.0 if a > b else 0.0,
    "hstep": lambda a, b: 1.0 if a > b else (0.5 if a == b else 0.0),
}


class Node:
    """One value of the traced computation. Only Graph creates nodes."""
    __slots__ = ("graph", "op", "args", "value", "id", "__weakref__")

    def __init__(self, graph, op, args, value, id_):
        self.graph, self.op, self.args, self.value, self.id = graph, op, args, value, id_

    @property
    def is_const(self):
        return self.op == "const"

    def __repr__(self):
        return self.graph.describe(self)

    # arithmetic: Python numbers become constants
    def __add__(self, o): return self.graph.op("add", self, o)
    def __radd__(self, o): return self.graph.op("add", o, self)
    def __sub__(self, o): return self.graph.op("sub", self, o)
    def __rsub__(self, o): return self.graph.op("sub", o, self)
    def __mul__(self, o): return self.graph.op("mul", self, o)
    def __rmul__(self, o): return self.graph.op("mul", o, self)
    def __truediv__(self, o): return self.graph.op("div", self, o)
    def __rtruediv__(self, o): return self.graph.op("div", o, self)
    def __neg__(self): return self.graph.op("neg", self)
    def __pos__(self): return self

    def __pow__(self, o):
        if not (isinstance(o, numbers.Integral) or (isinstance(o, float) and o.is_integer())):
            self.graph.refuse(f"x ** {o!r} (only constant integer exponents; use ops.exp/ops.log)")
        return self.graph.op("pow", self, int(o))

    def __rpow__(self, o):
        self.graph.refuse(f"{o!r} ** x (use ops.exp(x * ops.log(base)))")

    # everything that would need a concrete value is refused with a clear reason
    def _branch(self, what):
        self.graph.refuse(f"{what} on a traced value (no branches on values: use ops.maximum/"
                          f"ops.minimum/ops.relu)")

    def __bool__(self): self._branch("a truth test (if/and/or/not)")
    def __lt__(self, o): self._branch("'<'")
    def __le__(self, o): self._branch("'<='")
    def __gt__(self, o): self._branch("'>'")
    def __ge__(self, o): self._branch("'>='")
    def __eq__(self, o): self._branch("'=='")
    def __ne__(self, o): self._branch("'!='")
    __hash__ = object.__hash__

    def __float__(self):
        self.graph.refuse("a conversion to float (math.* functions and float() need a number;"
                          " use gpurnn.ops)")

    def __int__(self): self.graph.refuse("a conversion to int")
    def __index__(self): self.graph.refuse("use as an index")
    def __abs__(self): self.graph.refuse("abs() (write ops.maximum(x, -x))")
    def __mod__(self, o): self.graph.refuse("'%'")
    def __floordiv__(self, o): self.graph.refuse("'//'")
    def __rfloordiv__(self, o): self.graph.refuse("'//'")
    def __rmod__(self, o): self.graph.refuse("'%'")
    def __matmul__(self, o): self.graph.refuse("'@' (a cell is the math of one hidden unit)")
    def __len__(self): self.graph.refuse("len() (a cell works on one hidden unit's scalars)")
    def __iter__(self): self.graph.refuse("iteration over a value")
    def __getitem__(self, i): self.graph.refuse("indexing a value")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        self.graph.refuse(f"numpy.{ufunc.__name__} (use gpurnn.ops.* instead)")

    def __array_function__(self, func, types, args, kwargs):
        self.graph.refuse(f"numpy.{func.__name__} (use gpurnn.ops.* instead)")

    def __getattr__(self, attr):   # e.g. x.exp(), x.sum(), x.shape
        if attr.startswith("__"):
            raise AttributeError(attr)     # Python protocols (copy, numpy probes) see "absent"
        raise CellDefinitionError(f"cell {self.graph.cell!r}: uses attribute .{attr} of a traced"
                                  f" value (only gpurnn.ops, arithmetic and number constants)")


class Graph:
    """Hash-consed nodes of one cell (forward, and later its derivative)."""

    def __init__(self, cell):
        self.cell = cell
        self.nodes = []          # in creation order = a topological order
        self._by_key = {}

    def refuse(self, what):
        raise CellDefinitionError(f"cell {self.cell!r}: uses {what}")

    def _make(self, op, args, value=None):
        key = (op, tuple(a.id for a in args), value)
        node = self._by_key.get(key)
        if node is None:
            node = Node(self, op, tuple(args), value, len(self.nodes))
            self.nodes.append(node)
            self._by_key[key] = node
        return node

    def input(self, kind, k):
        return self._make("input", (), (kind, k))

    def const(self, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            self.refuse(f"a constant of type {type(v).__name__} ({v!r}); only Python numbers")
        v = float(v)
        if not math.isfinite(v):
            self.refuse(f"the non-finite constant {v!r}")
        return self._make("const", (), v + 0.0)   # -0.0 -> 0.0: one zero

    def lift(self, v):
        if isinstance(v, Node):
            if v.graph is not self:
                self.refuse("a value traced by another cell")
            return v
        return self.const(v)

    def op(self, op, *args):
        """The node for ``op(args)``, simplified and shared."""
        if op == "pow":
            a, n = self.lift(args[0]), args[1]
            if n == 0:
                return self.const(1.0)
            if n == 1:
                return a
            if a.is_const:
                return self.const(a.value ** n)
            return self._make("pow", (a,), n)
        args = tuple(self.lift(a) for a in args)
        if all(a.is_const for a in args):
            try:
                return self.const(_EVAL[op](*(a.value for a in args)))
            except (ArithmeticError, ValueError):
                pass      # e.g. log(0): leave it to run time, as the user wrote it
        simple = _simplify(self, op, args)
        if simple is not None:
            return simple
        if op in COMMUTATIVE and args[0].id > args[1].id:
            args = (args[1], args[0])      # exact in floating point: a+b == b+a, a*b == b*a
        return self._make(op, args)

    def describe(self, node, depth=3):
        if node.op == "input":
            kind, k = node.value
            return f"{kind}[{k}]" if kind != "s" else f"state[{k}]"
        if node.op == "const":
            return repr(node.value)
        if depth == 0:
            return "..."
        inner = ", ".join(self.describe(a, depth - 1) for a in node.args)
        if node.op == "pow":
            inner += f", {node.value}"
        return f"{node.op}({inner})"


def _simplify(g, op, args):
    """Algebraic identities that are exact in floating point for finite values."""
    a = args[0]
    b = args[1] if len(args) > 1 else None
    if op == "add":
        if a.is_const and a.value == 0:
            return b
        if b.is_const and b.value == 0:
            return a
    elif op == "sub":
        if b.is_const and b.value == 0:
            return a
        if a.is_const and a.value == 0:
            return g.op("neg", b)
    elif op == "mul":
        for x, y in ((a, b), (b, a)):
            if x.is_const:
                if x.value == 1:
                    return y
                if x.value == 0:
                    return x
                if x.value == -1:
                    return g.op("neg", y)
    elif op == "div":
        if b.is_const and b.value == 1:
            return a
        if a.is_const and a.value == 0:
            return a
    elif op == "neg":
        if a.op == "neg":
            return a.args[0]
    return None


def apply(name, args):
    """gpurnn.ops.<name> on traced values."""
    graph = next(a.graph for a in args if isinstance(a, Node))
    expected = 2 if name in BINARY else 1
    if len(args) != expected:
        graph.refuse(f"ops.{name} with {len(args)} arguments (it takes {expected})")
    return graph.op(name, *args)


def trace(cell, fn, n_gates, n_states):
    """Run ``fn`` on symbolic inputs. Returns (graph, inputs, outputs): inputs is a dict
    {'xg': [nodes], 'hg': [...], 's': [...]}, outputs the list of new-state nodes."""
    g = Graph(cell)
    inputs = {kind: [g.input(kind, k) for k in range(n)]
              for kind, n in (("xg", n_gates), ("hg", n_gates), ("s", n_states))}
    try:
        result = fn(_Gates(g, "xg", inputs["xg"]), _Gates(g, "hg", inputs["hg"]),
                    tuple(inputs["s"]))
    except CellDefinitionError:
        raise
    except Exception as exc:   # the user's code failed on symbolic input: say where
        raise CellDefinitionError(f"cell {cell!r}: its forward raised {type(exc).__name__}: {exc}"
                                  f" (a cell may use only gpurnn.ops, arithmetic and number"
                                  f" constants)") from exc
    if isinstance(result, Node) or not isinstance(result, (tuple, list)):
        raise CellDefinitionError(f"cell {cell!r}: forward must return a tuple of {n_states} new"
                                  f" state(s), got {type(result).__name__}")
    if len(result) != n_states:
        raise CellDefinitionError(f"cell {cell!r}: forward returned {len(result)} state(s), but"
                                  f" states= names {n_states}")
    outputs = [g.lift(v) for v in result]
    return g, inputs, outputs


class _Gates(tuple):
    """xg / hg as seen by the traced function: indexing past the gate count names the cell."""

    def __new__(cls, graph, kind, nodes):
        self = super().__new__(cls, nodes)
        self._graph, self._kind = graph, kind
        return self

    def __getitem__(self, k):
        try:
            return tuple.__getitem__(self, k)
        except IndexError:
            self._graph.refuse(f"{self._kind}[{k}], but gates= names {len(self)} gate(s)")
        except TypeError:
            self._graph.refuse(f"{self._kind}[{k!r}] (index gates by integer position)")


def topological(outputs):
    """Nodes reachable from ``outputs``, arguments before their users."""
    seen, order = set(), []
    stack = [(n, False) for n in reversed(outputs)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node.id in seen:
            continue
        seen.add(node.id)
        stack.append((node, True))
        stack.extend((a, False) for a in reversed(node.args) if a.id not in seen)
    return order
