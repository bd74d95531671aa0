"""The CPU backend's fused row functions, generated from a cell spec.

One (step t, batch row b) of a cell over hidden units u0..u1-1, in a single pass that
calls the cell's generated scalar forward/backward (gpurnn.cells.codegen) once per unit.
Every cell gets the same two signatures, so the step loops of gpurnn.cpu.kernels are
written once:

    forward_row(gx, gh, bias, st, t, b, aux, u0, u1)
        gx   (G*H,)   gx[t, b]: gate k's x W_ih^T at [k*H : (k+1)*H] (in); saves 0..G-1 (out)
        gh   (G*n,)   this part's recurrent products h_{t-1} W_hh^T, gate-major, n = u1 - u0
        bias (2, G*H) b_ih, b_hh (zeros where the layer has none)
        st   (S, T+1, B, H) state sequences: reads st[:, t, b], writes st[:, t+1, b]
        aux  (A*H,)   aux[t, b]: saves G..V-1 (A = max(V - G, 0)), out
    backward_row(dout, ds, acts, aux, st, t, b, dgx, dgh, u0, u1)
        dout (H,)     dout[t, b]          ds (S, B, H) carried dL/d state (in: what step t+1
                      sends back, ds[0] including its dgh W_hh; out: the direct part for t-1)
        acts, aux     the forward's saves for (t, b)
        dgx, dgh (G*H,) dL/d xg and dL/d hg of (t, b) (out; the same array when every gate is
                      tied, gpurnn.cells.autodiff)

The source is written with one line per gate, state and save (views of each block,
then the loop over units), because Numba vectorises the loop only when every array is
indexed by the loop counter alone: ``2 * H + j`` gets Numba's negative-index
wraparound and stops LLVM (51 ns vs 2.8 ns per LSTM unit, measured).
``row_source(spec)`` returns it; the functions are compiled as part of the step loops
that call them (inline), so they are cached on disk with those.
"""


def row_source(spec):
    """Source of forward_row and backward_row for ``spec`` (see module doc)."""
    G, S, V = spec.n_gates, spec.n_states, spec.n_saves
    gates, states, saves = range(G), range(S), range(V)

    def save_view(k, array):
        """Where save k lives: acts/gx gate block k, or aux block k - G."""
        return (f"{array}[{k} * H + u0:{k} * H + u1]" if k < G
                else f"aux[{k - G} * H + u0:{k - G} * H + u1]")

    fwd = ["def forward_row(gx, gh, bias, st, t, b, aux, u0, u1):",
           "    H = st.shape[3]",
           "    n = u1 - u0"]
    fwd += [f"    x{k} = gx[{k} * H + u0:{k} * H + u1]" for k in gates]
    fwd += [f"    r{k} = gh[{k} * n:{k + 1} * n]" for k in gates]
    fwd += [f"    bx{k} = bias[0, {k} * H + u0:{k} * H + u1]" for k in gates]
    fwd += [f"    bh{k} = bias[1, {k} * H + u0:{k} * H + u1]" for k in gates]
    fwd += [f"    p{s} = st[{s}, t, b, u0:u1]" for s in states]
    fwd += [f"    q{s} = st[{s}, t + 1, b, u0:u1]" for s in states]
    # saves 0..G-1 overwrite the gate inputs in place through the SAME views x{k} (a second
    # view of gx per gate made LLVM give up vectorising the loop: 1.4-1.9x slower forward)
    fwd += [f"    w{k} = aux[{k - G} * H + u0:{k - G} * H + u1]" for k in saves if k >= G]
    results = [f"n{s}" for s in states] + [f"v{k}" for k in saves]
    args = ([f"x{k}[j] + bx{k}[j]" for k in gates] + [f"r{k}[j] + bh{k}[j]" for k in gates] +
            [f"p{s}[j]" for s in states])
    fwd += ["    for j in range(n):",
            f"        {', '.join(results)}, = cell_forward({', '.join(args)})"]
    fwd += [f"        q{s}[j] = n{s}" for s in states]
    fwd += [f"        {'x' if k < G else 'w'}{k}[j] = v{k}" for k in saves]

    untied = not spec.all_tied
    bwd = ["def backward_row(dout, ds, acts, aux, st, t, b, dgx, dgh, u0, u1):",
           "    H = st.shape[3]",
           "    do = dout[u0:u1]"]
    bwd += [f"    e{s} = ds[{s}, b, u0:u1]" for s in states]
    bwd += [f"    w{k} = {save_view(k, 'acts')}" for k in saves]
    bwd += [f"    p{s} = st[{s}, t, b, u0:u1]" for s in states]
    bwd += [f"    q{s} = st[{s}, t + 1, b, u0:u1]" for s in states]
    bwd += [f"    gx{k} = dgx[{k} * H + u0:{k} * H + u1]" for k in gates]
    if untied:
        bwd += [f"    gh{k} = dgh[{k} * H + u0:{k} * H + u1]" for k in gates]
    grads = ([f"dx{k}" for k in gates] + [f"dh{k}" for k in gates] + [f"de{s}" for s in states])
    args = (["e0[j] + do[j]"] + [f"e{s}[j]" for s in states if s > 0] +
            [f"w{k}[j]" for k in saves] + [f"p{s}[j]" for s in states] +
            [f"q{s}[j]" for s in states])
    bwd += ["    for j in range(u1 - u0):",
            f"        {', '.join(grads)}, = cell_backward({', '.join(args)})"]
    bwd += [f"        gx{k}[j] = dx{k}" for k in gates]
    if untied:
        bwd += [f"        gh{k}[j] = dh{k}" for k in gates]
    bwd += [f"        e{s}[j] = de{s}" for s in states]
    return "\n".join(fwd) + "\n\n\n" + "\n".join(bwd) + "\n"
