"""gpurnn: fused recurrent-network kernels (Elman RNN, LSTM, GRU) for NumPy, Numba CPU and
Numba CUDA, with a torch.nn-compatible API and BPTT (full and truncated).

    import gpurnn
    m = gpurnn.LSTM(input_size, hidden_size, backend="auto")
    out, (h_n, c_n) = m(x)                 # x (T, B, I)
    dx, (dh0, dc0) = m.backward(dout)      # gradients accumulate in m.grads
"""
from .backend import BackendUnavailable, available_backends, get_backend
from .layers import GRU, LSTM, RNN
from .tbptt import tbptt_windows

__version__ = "0.1.0"
__all__ = ["RNN", "LSTM", "GRU", "available_backends", "get_backend", "BackendUnavailable",
           "tbptt_windows", "__version__"]
