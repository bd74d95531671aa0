"""gpurnn: fused recurrent-network kernels (Elman RNN, LSTM, GRU and cells you define) for
NumPy, Numba CPU and Numba CUDA, with a torch.nn-compatible API and BPTT (full and truncated).

    import gpurnn
    m = gpurnn.LSTM(input_size, hidden_size, backend="auto")
    out, (h_n, c_n) = m(x)                 # x (T, B, I)
    dx, (dh0, dc0) = m.backward(dout)      # gradients accumulate in m.grads

    from gpurnn import ops                 # a cell of your own: gpurnn.define_cell, below
    MGU = gpurnn.define_cell("mgu", gates=("f", "n"), states=("h",), forward=mgu)
    m = gpurnn.Recurrent(MGU, input_size, hidden_size)
"""
from . import ops
from .backend import BackendUnavailable, available_backends, get_backend
from .cells import CellDefinitionError, CellSpec, define_cell
from .layers import GRU, LSTM, RNN, Recurrent
from .train.tbptt import tbptt_window, tbptt_windows, window_at

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "Recurrent", "define_cell", "CellSpec", "CellDefinitionError",
           "ops", "available_backends", "get_backend", "BackendUnavailable", "tbptt_windows",
           "tbptt_window", "window_at",
           "__version__"]
