"""PyTorch bridge: ``gpurnn.torch.RNN / LSTM / GRU``, drop-ins for ``torch.nn.RNN / LSTM / GRU``.

    import gpurnn.torch
    lstm = gpurnn.torch.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)
    out, (h_n, c_n) = lstm(x)                  # as torch.nn.LSTM; x may be a PackedSequence
    out, (h_n, c_n) = lstm(x, lengths=lens)    # extension: right-padded x with (B,) lengths
    loss(out).backward()                       # gradients reach x, (h0, c0) and every weight

The modules subclass ``torch.nn.RNNBase``: same constructor arguments, parameter names,
shapes and initialisation (the same ``torch.manual_seed`` gives the same weights as
``torch.nn.LSTM``), ``state_dict`` interchangeable with torch's, ``train()/eval()`` for
dropout. Only the computation differs: every layer runs through ``_LayerFunction``, a
``torch.autograd.Function`` whose forward calls a one-layer gpurnn module (numpy, cpu or
cuda backend) and whose backward runs gpurnn's BPTT from the tape the forward kept.

* CPU tensors: backend "cpu" (Numba) when available, else "numpy". Parameters, input and
  state reach gpurnn as zero-copy NumPy views (``tensor.detach().numpy()``); results come
  back with ``torch.from_numpy`` (zero-copy).
* CUDA tensors: backend "cuda"; tensors reach it as CuPy arrays through
  ``__cuda_array_interface__`` (zero-copy) and everything is issued on torch's current
  stream (see kernels_docs/torch_bridge.md).
* Dropout between layers is ``torch.nn.functional.dropout`` on each layer's output, so it
  draws from torch's RNG (``torch.manual_seed`` reproduces it). The masks are *not*
  guaranteed to equal torch.nn's (cuDNN and packed inputs draw them differently).
* float32 and float64. Anything gpurnn cannot do (``proj_size > 0``, half precision, a
  backend that does not match the tensors' device, ...) raises ``UnsupportedError`` (a
  NotImplementedError that is also a ValueError and a TypeError) naming what is
  unsupported and what to use instead.

torch is optional: ``import gpurnn`` never imports this module.
"""
import contextlib
import threading
from collections import OrderedDict

try:
    import torch
    import torch.nn.functional as F
    from torch.autograd.function import once_differentiable
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError("gpurnn.torch needs PyTorch, which is not installed here: "
                      "pip install torch  (or, in the gpurnn checkout, pip install -e \".[torch]\")") from _exc

import numpy as np

from . import layers as _layers
from .backend import BackendUnavailable, available_backends, get_backend
from .validation import check_lengths

__all__ = ["RNN", "LSTM", "GRU", "UnsupportedError"]

_TORCH_TO_NUMPY_DTYPE = {torch.float32: "float32", torch.float64: "float64"}
_BACKEND_NAMES = ("auto", "numpy", "cpu", "cuda")


class UnsupportedError(NotImplementedError, ValueError, TypeError):
    """A combination gpurnn.torch does not run; the message says what to use instead."""


# --------------------------------------------------------------------------- conversions
class _HostConverter:
    """CPU tensors <-> NumPy arrays, both ways without copying."""
    device_type = "cpu"

    def __init__(self, device):
        self.device = device

    @staticmethod
    def to_array(t):
        return t.detach().numpy()

    @staticmethod
    def to_tensor(a):
        a = np.asarray(a)
        if not a.flags.writeable or any(s < 0 for s in a.strides):
            a = np.ascontiguousarray(a).copy()   # from_numpy: no read-only or reversed views
        return torch.from_numpy(a)

    @contextlib.contextmanager
    def running(self, backend):
        yield


class _CudaConverter:
    """CUDA tensors <-> CuPy arrays through ``__cuda_array_interface__`` (no copy).

    Everything gpurnn issues runs on torch's current stream: CuPy work through an
    ``ExternalStream`` wrapping it, Numba kernels through the backend's ``use_stream``
    hook when it has one. A backend without the hook launches on its own stream, so the
    bridge then orders it explicitly: torch's stream is synchronised before the call and
    the device after it (correct, slower; see kernels_docs/torch_bridge.md).
    """
    device_type = "cuda"

    def __init__(self, device):
        try:
            import cupy
        except ImportError as exc:
            raise UnsupportedError(
                "gpurnn.torch: CUDA tensors need CuPy to reach the 'cuda' backend without a copy;"
                " install it (pip install gpurnn[cuda12] or gpurnn[cuda13]), or move the module and"
                " inputs to the CPU with .cpu()") from exc
        self.cupy = cupy
        self.device = device

    def to_array(self, t):
        return self.cupy.asarray(t.detach())

    def to_tensor(self, a):
        if not hasattr(a, "__cuda_array_interface__"):
            a = self.cupy.asarray(a)
        return torch.as_tensor(a, device=self.device)

    @contextlib.contextmanager
    def running(self, backend):
        stream = torch.cuda.current_stream(self.device)
        cp = self.cupy
        with cp.cuda.Device(self.device.index if self.device.index is not None
                            else torch.cuda.current_device()):
            with cp.cuda.ExternalStream(stream.cuda_stream):
                hook = getattr(backend, "use_stream", None)
                if hook is not None:
                    with hook(stream.cuda_stream):
                        yield
                else:
                    stream.synchronize()
                    yield
                    cp.cuda.Device().synchronize()


def _converter(device):
    if device.type == "cpu":
        return _HostConverter(device)
    if device.type == "cuda":
        return _CudaConverter(device)
    raise UnsupportedError(f"gpurnn.torch: tensors on device type {device.type!r} are not supported;"
                           " use CPU or CUDA tensors, or torch.nn's RNN/LSTM/GRU on this device")


# --------------------------------------------------------------------------- one layer
class _LayerRunner:
    """A one-layer gpurnn module (both directions) reused by every call of one layer.

    Each call loads the live parameter views, runs forward and takes the tape away into
    the autograd context, so any number of forwards may be pending before their
    backwards (reused modules, gradcheck, checkpointing). The lock serialises calls that
    share the runner across threads (nn.DataParallel replicas share this object).
    """

    def __init__(self, cell, input_size, hidden_size, bias, bidirectional, backend, dtype):
        kwargs = dict(num_layers=1, bias=bias, batch_first=False, dropout=0.0,
                      bidirectional=bidirectional, backend=backend, dtype=dtype, seed=0)
        self.module = _layers.make_layer(cell, input_size, hidden_size, **kwargs)
        self.has_cell_state = cell == "lstm"
        self.names = list(self.module.parameters().keys())   # gpurnn names, *_l0[_reverse]
        self.lock = threading.Lock()

    def forward(self, x, h0, c0, lengths, params):
        m = self.module
        hx = (h0, c0) if self.has_cell_state else h0
        with self.lock:
            res, tape = m.forward_tape(x, hx, lengths, params=OrderedDict(zip(self.names, params)))
        if self.has_cell_state:
            out, (h_n, c_n) = res
        else:
            (out, h_n), c_n = res, None
        return out, h_n, c_n, tape

    def backward(self, tape, dout, dh_n, dc_n):
        dh = (dh_n, dc_n) if self.has_cell_state else dh_n
        with self.lock:
            dx, dh0, grads = self.module.backward_tape(tape, dout, dh)
        grads = [grads[n] for n in self.names]
        dh0, dc0 = dh0 if self.has_cell_state else (dh0, None)
        return dx, dh0, dc0, grads


class _LayerFunction(torch.autograd.Function):
    """One layer (both directions) of gpurnn inside torch.autograd.

    Inputs: runner, converter, backend, lengths (host int array or None), x (T, B, F)
    contiguous, h0 and c0 (D, B, H) or None, then the layer's parameters in the runner's
    order. Outputs: out (T, B, D*H), h_n (D, B, H) and, for LSTM, c_n.
    """

    @staticmethod
    def forward(ctx, runner, conv, backend, lengths, x, h0, c0, *params):
        with conv.running(backend):
            p_arr = [conv.to_array(p) for p in params]
            out, h_n, c_n, tape = runner.forward(
                conv.to_array(x), None if h0 is None else conv.to_array(h0),
                None if c0 is None else conv.to_array(c0), lengths, p_arr)
            results = [conv.to_tensor(out), conv.to_tensor(h_n)]
            if runner.has_cell_state:
                results.append(conv.to_tensor(c_n))
        ctx.runner, ctx.conv, ctx.backend, ctx.tape = runner, conv, backend, tape
        ctx.out_shape, ctx.out_dtype = tuple(out.shape), x.dtype
        # Saved only so torch's version counters catch in-place changes to what the tape
        # views (the input and the weights) between forward and backward.
        ctx.save_for_backward(x, *params)
        ctx.set_materialize_grads(False)
        return tuple(results)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dh_n, dc_n=None):
        ctx.saved_tensors   # raises if x or a weight was modified in place since forward
        conv, runner = ctx.conv, ctx.runner
        if dout is None:
            dout = torch.zeros(ctx.out_shape, dtype=ctx.out_dtype, device=conv.device)
        with conv.running(ctx.backend):
            dx, dh0, dc0, grads = runner.backward(
                ctx.tape, conv.to_array(dout.contiguous()),
                None if dh_n is None else conv.to_array(dh_n.contiguous()),
                None if dc_n is None else conv.to_array(dc_n.contiguous()))
            need = ctx.needs_input_grad
            dx = conv.to_tensor(dx) if need[4] else None
            dh0 = conv.to_tensor(dh0) if need[5] else None
            dc0 = conv.to_tensor(dc0) if (need[6] and dc0 is not None) else None
            dparams = [conv.to_tensor(g) if need[7 + i] else None for i, g in enumerate(grads)]
        return (None, None, None, None, dx, dh0, dc0, *dparams)


# --------------------------------------------------------------------------- modules
_resolved_auto = {}


def _resolve_backend(requested, device, dtype):
    """The gpurnn backend object for tensors on ``device`` with ``dtype``, or a clear error."""
    dname = _TORCH_TO_NUMPY_DTYPE.get(dtype)
    if dname is None:
        raise UnsupportedError(
            f"gpurnn.torch: dtype {dtype} is not supported (gpurnn runs float32 and float64);"
            f" convert with .float() or .double(), or use torch.nn's modules for {dtype}")
    on_gpu = device.type == "cuda"
    if device.type not in ("cpu", "cuda"):
        _converter(device)    # raises UnsupportedError naming the device type
    if not isinstance(requested, str):
        be = requested
        host = getattr(be, "xp", np) is np
        if host == on_gpu:
            raise UnsupportedError(
                f"gpurnn.torch: backend object {getattr(be, 'name', be)!r} works on "
                f"{'host' if host else 'device'} arrays but the tensors are on {device};"
                " move the module and inputs, or pass a backend for that device")
    elif on_gpu:
        if requested not in ("auto", "cuda"):
            raise UnsupportedError(
                f"gpurnn.torch: backend={requested!r} runs on host memory but the tensors are on"
                f" {device}; use backend='cuda' (or 'auto') for CUDA tensors, or move the module"
                " and inputs to the CPU with .cpu()")
        try:
            be = get_backend("cuda")
        except BackendUnavailable as exc:
            raise UnsupportedError(
                f"gpurnn.torch: CUDA tensors need gpurnn's 'cuda' backend, which is not available"
                f" here ({exc}); move the module and inputs to the CPU with .cpu(), or use"
                " torch.nn's modules on the GPU") from exc
    else:
        if requested == "cuda":
            raise UnsupportedError(
                "gpurnn.torch: backend='cuda' needs CUDA tensors but the tensors are on the CPU;"
                " move the module and inputs with .cuda(), or use backend='cpu', 'numpy' or 'auto'")
        if requested == "auto":
            if "cpu" not in _resolved_auto:
                _resolved_auto["cpu"] = "cpu" if "cpu" in available_backends() else "numpy"
            requested = _resolved_auto["cpu"]
        be = get_backend(requested)
    if dname not in be.dtypes:
        raise UnsupportedError(
            f"gpurnn.torch: backend {be.name!r} supports dtypes {tuple(be.dtypes)}, got {dname};"
            f" convert the module and inputs with .to({tuple(be.dtypes)[0]}), or use a backend"
            f" that runs {dname} (on CPU tensors: backend='numpy' or 'cpu')")
    return be


class _GpurnnRNNBase(torch.nn.RNNBase):
    """torch.nn.RNNBase whose computation is gpurnn's. Use RNN, LSTM or GRU."""

    _cell = None

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 backend="auto"):
        if proj_size:
            raise UnsupportedError(
                f"gpurnn.torch.LSTM: proj_size={proj_size} (LSTM with projections) is not supported"
                " by gpurnn; use torch.nn.LSTM for projections, or proj_size=0")
        if isinstance(backend, str):
            if backend not in _BACKEND_NAMES:
                raise ValueError(f"backend: expected one of {list(_BACKEND_NAMES)} or a gpurnn backend"
                                 f" object, got {backend!r}")
            if backend != "auto":
                get_backend(backend)      # BackendUnavailable now rather than at the first call
        elif not (hasattr(backend, "forward") and hasattr(backend, "backward")):
            raise TypeError(f"backend: expected a name or a gpurnn backend object, got "
                            f"{type(backend).__name__}")
        if dtype is not None and dtype not in _TORCH_TO_NUMPY_DTYPE:
            raise UnsupportedError(
                f"gpurnn.torch: dtype {dtype} is not supported (gpurnn runs float32 and float64);"
                f" use dtype=torch.float32 or torch.float64, or torch.nn's modules for {dtype}")
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)
        self.backend = backend
        self._gpurnn_runners = {}

    # Runners (gpurnn modules, backend objects) are a cache: never pickled or deep-copied.
    def __getstate__(self):
        state = super().__getstate__()
        state["_gpurnn_runners"] = {}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._gpurnn_runners = {}

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"

    def _runner(self, layer, backend, dtype, device):
        key = (layer, id(backend), dtype, str(device))
        runner = self._gpurnn_runners.get(key)
        if runner is None:
            D = 2 if self.bidirectional else 1
            in_size = self.input_size if layer == 0 else D * self.hidden_size
            runner = _LayerRunner(self._cell, in_size, self.hidden_size, self.bias,
                                  self.bidirectional, backend, _TORCH_TO_NUMPY_DTYPE[dtype])
            self._gpurnn_runners[key] = runner
        return runner

    def _layer_params(self, layer, runner):
        return [getattr(self, n.replace("_l0", f"_l{layer}", 1)) for n in runner.names]

    def forward(self, input, hx=None, lengths=None):
        """As torch.nn's forward, plus ``lengths`` (B,) for right-padded (non-packed) input."""
        is_lstm = self._cell == "lstm"
        packed = isinstance(input, PackedSequence)
        batched = True
        if packed:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; pass either a"
                                 " PackedSequence or a padded tensor with lengths=, not both")
            x, lens = pad_packed_sequence(input, batch_first=False)   # original batch order
            lengths_np = lens.cpu().numpy().astype(np.int64)
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input: expected a torch.Tensor or a PackedSequence, got "
                                f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected 2 (unbatched) or 3 dimensions, got shape "
                                 f"{tuple(input.shape)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            lengths_np = None
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"input: expected input_size {self.input_size} in the last dimension,"
                             f" got shape {tuple(input.shape if not packed else x.shape)}")
        if not packed and lengths is not None:
            if isinstance(lengths, torch.Tensor):
                lengths = lengths.detach().cpu().numpy()
            lengths_np = check_lengths(lengths, B, T)

        w0 = getattr(self, self._flat_weights_names[0])
        device, dtype = w0.device, w0.dtype
        if x.dtype != dtype:
            raise TypeError(f"input: expected dtype {dtype} (the weights' dtype), got {x.dtype};"
                            f" convert with input.to({dtype}) or the model with model.to({x.dtype})")
        if x.device != device:
            raise ValueError(f"input: expected a tensor on {device} (the weights' device), got one"
                             f" on {x.device}")
        backend = _resolve_backend(self.backend, device, dtype)
        conv = _converter(device)
        x = x.contiguous()

        h0, c0 = self._split_hx(hx, B, batched, dtype, device)
        L, D = self.num_layers, (2 if self.bidirectional else 1)
        layer_in, h_n, c_n = x, [], []
        for layer in range(L):
            runner = self._runner(layer, backend, dtype, device)
            sl = slice(layer * D, (layer + 1) * D)
            res = _LayerFunction.apply(runner, conv, backend, lengths_np, layer_in,
                                       None if h0 is None else h0[sl],
                                       None if c0 is None else c0[sl],
                                       *self._layer_params(layer, runner))
            out = res[0]
            h_n.append(res[1])
            if is_lstm:
                c_n.append(res[2])
            if self.training and self.dropout > 0 and layer < L - 1:
                out = F.dropout(out, self.dropout, training=True)
            layer_in = out
        out = layer_in
        h_n = h_n[0] if L == 1 else torch.cat(h_n, 0)
        if is_lstm:
            c_n = c_n[0] if L == 1 else torch.cat(c_n, 0)

        if packed:
            out = _pack_like(out, input)
        elif not batched:
            out = out.squeeze(1)
            h_n = h_n.squeeze(1)
            if is_lstm:
                c_n = c_n.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return (out, (h_n, c_n)) if is_lstm else (out, h_n)

    def _split_hx(self, hx, B, batched, dtype, device):
        L, D, H = self.num_layers, (2 if self.bidirectional else 1), self.hidden_size
        name = type(self).__name__
        if self._cell == "lstm":
            if hx is None:
                return None, None
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h0, c0) for LSTM, got {type(hx).__name__}")
            states, names = list(hx), ("h0", "c0")
        else:
            if isinstance(hx, (tuple, list)):
                raise TypeError(f"hx: expected one tensor h0 for {name}, got a {type(hx).__name__}")
            states, names = [hx, None], ("h0", "c0")
        expected = (L * D, B, H) if batched else (L * D, H)
        for i, (s, n) in enumerate(zip(states, names)):
            if s is None:
                continue
            if not isinstance(s, torch.Tensor):
                raise TypeError(f"{n}: expected a torch.Tensor, got {type(s).__name__}")
            if tuple(s.shape) != expected:
                raise ValueError(f"{n}: expected shape {expected} (num_layers*num_directions, "
                                 f"{'batch, ' if batched else ''}hidden_size), got {tuple(s.shape)}")
            if s.dtype != dtype or s.device != device:
                raise TypeError(f"{n}: expected a {dtype} tensor on {device} (as the weights), got "
                                f"{s.dtype} on {s.device}")
            if not batched:
                s = s.unsqueeze(1)
            states[i] = s.contiguous()
        return states[0], states[1]


def _pack_like(out, packed_input):
    """Pack ``out`` (T, B, F), rows in original batch order, like ``packed_input``."""
    batch_sizes = packed_input.batch_sizes          # on the CPU, as torch keeps it
    sorted_indices = packed_input.sorted_indices
    T = batch_sizes.numel()
    total = int(batch_sizes.sum())
    t_idx = torch.repeat_interleave(torch.arange(T), batch_sizes)
    starts = torch.cumsum(batch_sizes, 0) - batch_sizes
    pos = torch.arange(total) - torch.repeat_interleave(starts, batch_sizes)
    b_idx = pos if sorted_indices is None else sorted_indices.cpu()[pos]
    data = out[t_idx.to(out.device), b_idx.to(out.device)]
    return PackedSequence(data, batch_sizes, sorted_indices, packed_input.unsorted_indices)


class RNN(_GpurnnRNNBase):
    """Elman RNN (tanh or relu) as torch.nn.RNN, computed by gpurnn."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 backend="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self._cell = f"rnn_{nonlinearity}"
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype, backend)
        self.nonlinearity = nonlinearity


class LSTM(_GpurnnRNNBase):
    """LSTM (gates i, f, g, o) as torch.nn.LSTM, computed by gpurnn. proj_size must be 0."""

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 backend="auto"):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend)


class GRU(_GpurnnRNNBase):
    """GRU (gates r, z, n; reset after the recurrent matmul) as torch.nn.GRU, computed by gpurnn."""

    _cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, backend="auto"):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend)
