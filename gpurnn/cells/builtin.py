"""The built-in cells, defined through the public ``define_cell`` like any user's cell.

Adding a pointwise cell to gpurnn is adding a function and a ``define_cell`` call here:
every backend, the layers, the torch bridge, the CLI and the tests read the registry.

Gate order and biases of the first four are torch/cuDNN's (weights move unchanged):
    rnn_tanh / rnn_relu   h = act(x W_ih^T + b_ih + h W_hh^T + b_hh)
    lstm                  gates i, f, g, o; states h, c
    gru                   gates r, z, n; the reset gate scales the recurrent part of n
                          after the matmul: n = tanh(xg_n + r * hg_n)
Three more prove the path (kernels_docs/cells.md):
    mgu                   minimal gated unit (Zhou et al. 2016), gates f, n
    cifg_lstm             LSTM with coupled input and forget gates (i = 1 - f; Greff et
                          al. 2017), gates f, g, o
    slstm                 xLSTM's scalar LSTM (Beck et al. 2024): exponential input gate,
                          sigmoid forget gate, normaliser n and stabiliser m, states h, c,
                          n, m; as NX-AI/flashrnn's slstm cell
"""
from .. import ops
from . import define_cell


def rnn_tanh(xg, hg, state):
    return (ops.tanh(xg[0] + hg[0]),)


def rnn_relu(xg, hg, state):
    return (ops.relu(xg[0] + hg[0]),)


def lstm(xg, hg, state):
    h, c = state
    i = ops.sigmoid(xg[0] + hg[0])
    f = ops.sigmoid(xg[1] + hg[1])
    g = ops.tanh(xg[2] + hg[2])
    o = ops.sigmoid(xg[3] + hg[3])
    c = f * c + i * g
    return (o * ops.tanh(c), c)


def gru(xg, hg, state):
    (h,) = state
    r = ops.sigmoid(xg[0] + hg[0])
    z = ops.sigmoid(xg[1] + hg[1])
    n = ops.tanh(xg[2] + r * hg[2])
    return ((1.0 - z) * n + z * h,)


def mgu(xg, hg, state):
    (h,) = state
    f = ops.sigmoid(xg[0] + hg[0])
    n = ops.tanh(xg[1] + f * hg[1])
    return ((1.0 - f) * h + f * n,)


def cifg_lstm(xg, hg, state):
    h, c = state
    f = ops.sigmoid(xg[0] + hg[0])
    g = ops.tanh(xg[1] + hg[1])
    o = ops.sigmoid(xg[2] + hg[2])
    c = f * c + (1.0 - f) * g
    return (o * ops.tanh(c), c)


def slstm(xg, hg, state):
    h, c, n, m = state
    i_log = xg[0] + hg[0]                       # log of the exponential input gate
    f_log = -ops.softplus(-(xg[1] + hg[1]))     # log of the sigmoid forget gate
    z = ops.tanh(xg[2] + hg[2])
    o = ops.sigmoid(xg[3] + hg[3])
    m_new = ops.maximum(f_log + m, i_log)       # stabiliser: keeps the exponentials <= 1
    i = ops.exp(i_log - m_new)
    f = ops.exp(f_log + m - m_new)
    c_new = f * c + i * z
    n_new = f * n + i
    return (o * c_new / n_new, c_new, n_new, m_new)


RNN_TANH = define_cell("rnn_tanh", ("h",), ("h",), rnn_tanh, torch_mode="RNN_TANH",
                       label="Elman RNN (tanh)", reference="rnn_tanh")
RNN_RELU = define_cell("rnn_relu", ("h",), ("h",), rnn_relu, torch_mode="RNN_RELU",
                       label="Elman RNN (relu)", reference="rnn_relu")
LSTM = define_cell("lstm", ("i", "f", "g", "o"), ("h", "c"), lstm, torch_mode="LSTM",
                   label="LSTM", reference="lstm")
GRU = define_cell("gru", ("r", "z", "n"), ("h",), gru, torch_mode="GRU", label="GRU",
                  reference="gru")
MGU = define_cell("mgu", ("f", "n"), ("h",), mgu, label="MGU")
CIFG_LSTM = define_cell("cifg_lstm", ("f", "g", "o"), ("h", "c"), cifg_lstm, label="CIFG-LSTM")
SLSTM = define_cell("slstm", ("i", "f", "z", "o"), ("h", "c", "n", "m"), slstm, label="sLSTM")
