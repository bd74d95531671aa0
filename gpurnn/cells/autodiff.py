"""The derived backward of a traced cell, and what the forward must save for it.

Reverse-mode differentiation of the forward graph (gpurnn.cells.graph), built as more
nodes of the same hash-consed graph, so the backward shares subexpressions with itself and
with the forward. Given dn[k] = dL/d(new state k) it yields

    dxg[k], dhg[k]   dL/d(gate k's input / recurrent pre-activation)
    ds[k]            dL/d(previous state k) along paths that do not pass through W_hh

(the kernels add dhg @ W_hh to ds[0] themselves). ``tied[k]`` says dxg[k] and dhg[k] are
one value (the cell only ever uses xg[k] + hg[k]), so a kernel can keep one buffer.

What to save. The backward needs some forward values (a sigmoid's output, a multiplier).
Free in the backward are the previous and new states (kept in the state sequences) and
constants; everything else is either saved by the forward (one number per unit per step)
or recomputed there. ``choose_saves`` picks, in forward order, the fewest saves: an
arithmetic node is recomputed when that needs no more saves than saving it (ties go to
recomputing, whose arguments are more often shared); a transcendental one is recomputed
only from free values (tanh(c) from the new c, as the hand-written LSTM did), else saved.
For the built-ins this reproduces the hand-written choice: LSTM saves i, f, g, o; GRU
r, z, n and hg[n]; the Elman RNNs nothing.
"""
from typing import NamedTuple

from .graph import ARITH, topological

# cheap enough to recompute whenever their arguments are at hand
_CHEAP = set(ARITH) | {"relu", "maximum", "minimum", "gt", "hstep"}


class Derivative(NamedTuple):
    dn: list          # input nodes: gradient w.r.t. each new state
    dxg: list         # per gate
    dhg: list         # per gate
    ds: list          # per state (direct part)
    tied: tuple       # per gate: dxg[k] is dhg[k]
    saves: tuple      # forward nodes the forward stores for the backward
    n_forward: int    # nodes below this id belong to the forward


def _partials(g, y, adj):
    """(argument, contribution) pairs of node y = op(args) given its adjoint ``adj``."""
    op, args = y.op, y.args
    a = args[0]
    b = args[1] if len(args) > 1 else None
    one = g.const(1.0)
    if op == "add":
        return ((a, adj), (b, adj))
    if op == "sub":
        return ((a, adj), (b, g.op("neg", adj)))
    if op == "mul":
        return ((a, g.op("mul", adj, b)), (b, g.op("mul", adj, a)))
    if op == "div":
        return ((a, g.op("div", adj, b)),
                (b, g.op("neg", g.op("div", g.op("mul", adj, y), b))))
    if op == "neg":
        return ((a, g.op("neg", adj)),)
    if op == "pow":
        n = y.value
        return ((a, g.op("mul", adj, g.op("mul", g.const(n), g.op("pow", a, n - 1)))),)
    if op == "sigmoid":
        return ((a, g.op("mul", adj, g.op("mul", y, g.op("sub", one, y)))),)
    if op == "tanh":
        return ((a, g.op("mul", adj, g.op("sub", one, g.op("mul", y, y)))),)
    if op == "exp":
        return ((a, g.op("mul", adj, y)),)
    if op == "log":
        return ((a, g.op("div", adj, a)),)
    if op == "softplus":
        return ((a, g.op("mul", adj, g.op("sigmoid", a))),)
    if op == "relu":
        return ((a, g.op("mul", adj, g.op("gt", y, g.const(0.0)))),)
    if op == "maximum":
        return ((a, g.op("mul", adj, g.op("hstep", a, b))), (b, g.op("mul", adj, g.op("hstep", b, a))))
    if op == "minimum":
        return ((a, g.op("mul", adj, g.op("hstep", b, a))), (b, g.op("mul", adj, g.op("hstep", a, b))))
    return ()          # gt, hstep: piecewise constant


def derive(graph, inputs, outputs):
    """Reverse-mode derivative of ``outputs`` (new states) w.r.t. all inputs."""
    n_forward = len(graph.nodes)
    dn = [graph.input("dn", k) for k in range(len(outputs))]
    adj = {}

    def accumulate(node, contribution):
        if node.is_const:
            return
        prev = adj.get(node.id)
        adj[node.id] = contribution if prev is None else graph.op("add", prev, contribution)

    for k, out in enumerate(outputs):
        accumulate(out, dn[k])
    for node in reversed(topological(outputs)):
        a = adj.get(node.id)
        if a is None or node.op in ("input", "const"):
            continue
        for arg, contribution in _partials(graph, node, a):
            accumulate(arg, contribution)

    zero = graph.const(0.0)
    grad = {kind: [adj.get(n.id, zero) for n in nodes] for kind, nodes in inputs.items()}
    tied = tuple(x is h for x, h in zip(grad["xg"], grad["hg"]))
    results = grad["xg"] + grad["hg"] + grad["s"]
    saves = choose_saves(results, inputs, outputs, n_forward)
    return Derivative(dn, grad["xg"], grad["hg"], grad["s"], tied, saves, n_forward)


def needed_forward_values(results, n_forward):
    """Forward nodes the backward expressions ``results`` read directly."""
    seen, needed = set(), {}
    stack = list(results)
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen.add(node.id)
        if node.id < n_forward:
            needed[node.id] = node
        else:
            stack.extend(node.args)
    return [needed[i] for i in sorted(needed)]


def choose_saves(results, inputs, outputs, n_forward, extra_free=()):
    """The forward nodes to store (see module doc), in forward order."""
    free = {n.id for n in inputs["s"]} | {n.id for n in outputs} | {n.id for n in extra_free}
    saved = {}

    def plan(node, memo):
        """Nodes to save so that ``node`` is available in the backward (a dict id->node)."""
        if node.id in memo:
            return memo[node.id]
        if node.is_const or node.id in free or node.id in saved:
            result = {}
        elif node.op == "input":
            result = {node.id: node}
        else:
            sub = {}
            for arg in node.args:
                sub.update(plan(arg, memo))
            if node.op in _CHEAP:
                result = sub if len(sub) <= 1 else {node.id: node}
            else:
                result = sub if not sub else {node.id: node}
        memo[node.id] = result
        return result

    for node in needed_forward_values(results, n_forward):
        saved.update(plan(node, {}))
    return tuple(saved[i] for i in sorted(saved))
