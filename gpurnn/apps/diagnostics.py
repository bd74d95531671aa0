"""Gradient flow through time: why BPTT vanishes or explodes, measured.

For a loss L at the last step T of a long sequence, BPTT sends the gradient back through
the state Jacobians J_t = d s_t / d s_{t-1}:

    dL/ds_t = dL/ds_T  J_T J_{T-1} ... J_{t+1}          (s = h, or (h, c) for LSTM)

which is the lecture note's product of derivatives prod_j d_{h_{j-1}} f(x_j, h_{j-1}, w_h).
Its norm shrinks or grows roughly geometrically with the distance T - t: a tanh RNN at
the usual initialisation vanishes, a ReLU RNN with large recurrent weights explodes, and
the LSTM's cell state (c_t = f c_{t-1} + ...) and the GRU's interpolation
(h_t = (1 - z) n + z h_{t-1}) carry it much further. Truncated BPTT with window k simply
stops the product: no gradient reaches more than k steps back.

Everything is measured with the library's own forward/backward (one layer, float64 on the
numpy backend by default): each step's Jacobian comes from one backward call over a batch
of identical rows whose final-state gradients are the unit vectors.
"""
from dataclasses import dataclass

import numpy as np

from ..cells import get_cell
from ..layers import Recurrent

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")     # the default comparison; any registered cell works
# Recurrent-weight gain per cell for the demonstration (None, or absent: the torch-style init).
DEFAULT_GAINS = {"rnn_relu": 2.0}
# Bias added to a forget gate "f" (LSTM, MGU, CIFG-LSTM, sLSTM) or update gate "z" (GRU):
# the common "remember by default" initialisation.
DEFAULT_GATE_BIAS = 1.0
REMEMBER_GATES = ("f", "z")


@dataclass
class GradFlow:
    """Arrays indexed by the distance d = T - 1 - t (0 = the step with the loss)."""
    cell: str
    distance: np.ndarray            # (T,)
    grad_norm: np.ndarray           # ||dL/dh_t||, full BPTT
    grad_norm_truncated: np.ndarray  # ||dL/dh_t|| with truncated BPTT (0 beyond the window)
    jacobian_norm: np.ndarray       # spectral norm of J_T ... J_{t+1} (1 at d = 0)
    truncate: int


def build_model(cell, hidden=32, input_size=8, recurrent_gain="default", gate_bias=DEFAULT_GATE_BIAS,
                backend="numpy", seed=0):
    """A one-layer float64 model set up for the gradient-flow demonstration."""
    spec = get_cell(cell)
    model = Recurrent(spec, input_size, hidden, backend=backend, dtype="float64", seed=seed)
    gain = DEFAULT_GAINS.get(spec.name) if recurrent_gain == "default" else recurrent_gain
    sd = model.state_dict()
    if gain is not None:   # W_hh = gain * orthogonal: every direction grows/shrinks by `gain`
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((hidden, hidden)))
        w = sd["weight_hh_l0"]
        for g in range(w.shape[0] // hidden):
            w[g * hidden:(g + 1) * hidden] = gain * q / np.sqrt(w.shape[0] // hidden)
    for k, gate in enumerate(spec.gates):
        if gate_bias and gate in REMEMBER_GATES:
            sd["bias_hh_l0"][k * hidden:(k + 1) * hidden] += gate_bias
    model.load_state_dict(sd)
    return model


def state_jacobians(model, x):
    """Per-step state Jacobians of a one-layer model over x (T, I).

    Returns (J, h): J (T, S, S) with J[t][i, j] = d s_t[i] / d s_{t-1}[j], S = (number of
    the cell's states) * H (s = (h, c) for LSTM); h (T, H) the hidden states. Row i of J[t]
    is the gradient w.r.t. s_{t-1} of s_t[i], which one backward call over S identical rows
    gives at once. ``model``: a one-layer unidirectional gpurnn.Recurrent.
    """
    if model.num_layers != 1 or model.bidirectional:
        raise ValueError("model: state_jacobians needs a one-layer unidirectional model")
    H, n_states = model.hidden_size, model.spec.n_states
    S = n_states * H
    probe = np.eye(S, dtype=model.dtype)
    T = x.shape[0]
    J = np.zeros((T, S, S))
    hs = np.zeros((T, H))
    state = tuple(np.zeros((1, 1, H), model.dtype) for _ in range(n_states))
    for t in range(T):
        xt = np.repeat(x[t][None, None, :].astype(model.dtype), S, axis=1)      # (1, S, I)
        out, new_state = model(xt, tuple(np.repeat(s, S, axis=1) for s in state))
        probes = tuple(probe[None, :, k * H:(k + 1) * H] for k in range(n_states))
        _, dstate0 = model.backward(np.zeros_like(out), probes, need_dx=False)
        J[t] = np.concatenate([d[0] for d in dstate0], axis=1)
        state = tuple(s[:, :1] for s in new_state)
        hs[t] = out[0, 0]
    model.zero_grad()
    return J, hs


def gradient_flow(cell, T=120, hidden=32, input_size=8, truncate=20, recurrent_gain="default",
                  gate_bias=DEFAULT_GATE_BIAS, backend="numpy", seed=0):
    """Norms of dL/dh_t and of the Jacobian products against the distance T - 1 - t, for
    L = v . h_{T-1} with a fixed random unit vector v."""
    model = build_model(cell, hidden, input_size, recurrent_gain, gate_bias, backend, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((T, input_size))
    J, _ = state_jacobians(model, x)
    S = J.shape[1]
    v = rng.standard_normal(hidden)
    g = np.zeros(S)
    g[:hidden] = v / np.linalg.norm(v)              # dL/ds_{T-1}: only through h
    product = np.eye(S)
    grad, grad_trunc, jac = np.zeros(T), np.zeros(T), np.zeros(T)
    g_trunc = g.copy()
    for d in range(T):
        t = T - 1 - d
        grad[d] = np.linalg.norm(g[:hidden])
        grad_trunc[d] = np.linalg.norm(g_trunc[:hidden])
        jac[d] = np.linalg.norm(product, 2)
        # step back from s_t to s_{t-1}; truncation cuts where s_{t-1} ends a window
        g = g @ J[t]
        g_trunc = np.zeros(S) if t % truncate == 0 else g_trunc @ J[t]
        product = product @ J[t]
    return GradFlow(cell, np.arange(T), grad, grad_trunc, jac, truncate)


def gradient_flow_all(cells=CELLS, **kwargs):
    return {cell: gradient_flow(cell, **kwargs) for cell in cells}


def decay_rate(flow, start=5, stop=None):
    """Slope of log10 ||dL/dh_t|| per step of distance over [start, stop): < 0 vanishing,
    > 0 exploding (a least-squares fit, ignoring exact zeros)."""
    y = flow.grad_norm[start:stop]
    d = flow.distance[start:stop]
    keep = y > 0
    return float(np.polyfit(d[keep], np.log10(y[keep]), 1)[0])


def plot_gradient_flow(flows, path):
    """Two log-scale panels: ||dL/dh_t|| (full and truncated) and the Jacobian products.

    A truncated curve is exactly zero past the cut, which a log axis cannot draw: it ends in
    an "x" at its last nonzero point, so the cut is visible even where it hides under the
    full curve. Legends sit below the panels, off the data."""
    from .plotting import pyplot, save_figure
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    for i, (cell, f) in enumerate(flows.items()):
        color = f"C{i}"
        ax1.semilogy(f.distance, f.grad_norm, color=color, label=f"{cell}")
        nz = f.grad_norm_truncated > 0
        ax1.semilogy(f.distance[nz], f.grad_norm_truncated[nz], color=color, ls="--", lw=2.5, alpha=0.6,
                     label=f"{cell}, truncated k={f.truncate}")
        if nz.any() and not nz.all():       # where the truncated gradient becomes exactly 0
            last = np.flatnonzero(nz)[-1]
            ax1.semilogy(f.distance[last], f.grad_norm_truncated[last], "x", color=color, ms=9, mew=2.5)
        ax2.semilogy(f.distance, f.jacobian_norm, color=color, label=cell)
    k = next(iter(flows.values())).truncate
    ax1.axvline(k, color="gray", ls=":", label=f"truncation: exactly 0 beyond k={k} (x)")
    ax1.set_title("gradient reaching h_t:  ||dL/dh_t||")
    ax1.set_ylabel("||dL/dh_t||  (log scale)")
    ax2.set_title("Jacobian product  ||J_T ... J_{t+1}||_2")
    ax2.set_ylabel("spectral norm  (log scale)")
    for ax in (ax1, ax2):
        ax.set_xlabel("distance T - t (steps)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    save_figure(fig, path, outside_legends=True)
