"""PyTorch bridge: ``gpurnn.torch.RNN / LSTM / GRU``, drop-ins for ``torch.nn.RNN / LSTM / GRU``.

    import gpurnn.torch
    lstm = gpurnn.torch.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)
    out, (h_n, c_n) = lstm(x)                  # as torch.nn.LSTM; x may be a PackedSequence
    out, (h_n, c_n) = lstm(x, lengths=lens)    # extension: right-padded x with (B,) lengths
    out, (h_n, c_n) = lstm(ids)                # extension: integer token ids (T, B), one-hot rows
    loss(out).backward()                       # gradients reach x, (h0, c0) and every weight
    torch.compile(model, fullgraph=True)       # no graph break: the layers are custom ops

The modules subclass ``torch.nn.RNNBase``: the same constructor (positional order, keywords
and torch's own argument checks), parameter names, shapes and initialisation (the same
``torch.manual_seed`` gives the same weights as ``torch.nn.LSTM``), ``state_dict``
interchangeable with torch's, ``train()/eval()`` for dropout. Only the computation differs:
every layer (both directions) is one call of the custom op ``gpurnn::layer_forward``, whose
backward is ``gpurnn::layer_backward`` (gpurnn's BPTT); the tape between them travels as
tensors, so ``torch.compile`` and ``torch.export`` see two opaque ops with fake (meta)
implementations. A backward run with ``create_graph=True`` (double backward, gradient
penalties) instead differentiates a torch-ops implementation of the same recurrence.

* CPU tensors: backend "cpu" (Numba) when available, else "numpy". Parameters, input and
  state reach gpurnn as zero-copy NumPy views; results come back zero-copy.
* CUDA tensors: backend "cuda"; tensors reach it as CuPy arrays through
  ``__cuda_array_interface__`` (zero-copy) and everything is issued on torch's current
  stream (see kernels_docs/torch_bridge.md).
* Token ids (an extension; torch.nn takes floats only): an integer tensor (T, B) ((B, T)
  with batch_first, (T,) unbatched, or a PackedSequence of them) with values in
  0..input_size-1 stands for one-hot rows, as in gpurnn.layers: the first layer gathers
  W_ih's columns (the same numbers as F.one_hot(ids, input_size).to(dtype), without the
  matrix). Ids have no gradient. Bool tensors are rejected.
* No work for gradients nobody wants: the dX GEMM of the first layer runs only when the
  input requires grad (``ctx.needs_input_grad``), eagerly and under torch.compile.
* Dropout between layers is ``torch.nn.functional.dropout`` on each layer's output, so it
  draws from torch's RNG (``torch.manual_seed`` reproduces it).
* Errors are raised as torch raises them and as gpurnn does: ``ShapeError`` is a ValueError
  and a RuntimeError, ``DtypeError`` a TypeError, ValueError and RuntimeError. Anything
  gpurnn cannot do (half precision, a backend that does not match
  the tensors' device, ...) raises ``UnsupportedError`` (a NotImplementedError that is also
  a ValueError and a TypeError) naming what to use instead.

torch is optional: ``import gpurnn`` never imports this module.
"""
import contextlib
import threading
from collections import OrderedDict
from typing import List, NamedTuple, Optional, Tuple

try:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError("gpurnn.torch needs PyTorch, which is not installed here: "
                      "pip install torch  (or, in the gpurnn checkout, pip install -e \".[torch]\")") from _exc

import numpy as np

from . import layers as _layers
from .backend import BackendUnavailable, get_backend
from .cells import get_cell
from .validation import check_lengths, check_token_ids

__all__ = ["RNN", "LSTM", "GRU", "Recurrent", "UnsupportedError", "ShapeError", "DtypeError"]

_TORCH_TO_NUMPY_DTYPE = {torch.float32: "float32", torch.float64: "float64"}
_BACKEND_NAMES = ("auto", "numpy", "cpu", "cuda")


# --------------------------------------------------------------------------- errors
class UnsupportedError(NotImplementedError, ValueError, TypeError):
    """A combination gpurnn.torch does not run; the message says what to use instead."""


class ShapeError(ValueError, RuntimeError):
    """A shape torch.nn rejects with RuntimeError (input_size, hx shape, T=0) and gpurnn with
    ValueError: ``except RuntimeError`` written for torch and ``except ValueError`` both catch it."""


class DtypeError(TypeError, ValueError, RuntimeError):
    """An input or state whose dtype differs from the weights': gpurnn raises TypeError,
    torch.nn ValueError for the input and RuntimeError for hx."""


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
        return _numpy_to_tensor(np.asarray(a))

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


def _numpy_to_tensor(a):
    if not a.flags.writeable or any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a).copy()   # from_numpy: no read-only or reversed views
    return torch.from_numpy(a)


def _converter(device):
    if device.type == "cpu":
        return _HostConverter(device)
    if device.type == "cuda":
        return _CudaConverter(device)
    raise UnsupportedError(f"gpurnn.torch: tensors on device type {device.type!r} are not supported;"
                           " use CPU or CUDA tensors, or torch.nn's RNN/LSTM/GRU on this device")


# --------------------------------------------------------------------------- one layer
_SPECS = {}        # spec.key -> CellSpec: layer keys name a cell by its definition's hash


def _cell_token(cell):
    spec = get_cell(cell)
    _SPECS[spec.key] = spec
    return spec.key


class _LayerConfig(NamedTuple):
    """What a layer op needs besides tensors, spelled as the op's string argument ``key``
    (custom ops take tensors and plain values only, so the key names the runner)."""
    cell: str            # _cell_token(spec): the CellSpec's key
    input_size: int
    hidden_size: int
    bias: bool
    bidirectional: bool
    backend: str         # a backend name, or a token from _backend_token for an object
    proj_size: int = 0   # LSTM projections (torch's proj_size): h is proj_size wide

    @property
    def key(self):
        return "|".join(str(int(v) if isinstance(v, bool) else v) for v in self)

    @classmethod
    def from_key(cls, key):
        cell, i, h, bias, bidir, backend, proj = key.split("|")
        return cls(cell, int(i), int(h), bias == "1", bidir == "1", backend, int(proj))

    @property
    def out_size(self):
        """Features of h per direction: proj_size with a projection, else hidden_size."""
        return self.proj_size or self.hidden_size

    def state_size(self, k):
        """Features of state k (h is out_size wide, the LSTM's c hidden_size)."""
        return self.out_size if k == 0 else self.hidden_size

    @property
    def spec(self):
        return _SPECS[self.cell]

    @property
    def n_states(self):
        return self.spec.n_states

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1


_BACKEND_OBJECTS = {}       # token -> a configured backend object passed as backend=


def _backend_token(backend):
    """Validate ``backend=`` and return the string that names it inside a layer key."""
    if isinstance(backend, str):
        if backend not in _BACKEND_NAMES:
            raise ValueError(f"backend: expected one of {list(_BACKEND_NAMES)} or a gpurnn backend"
                             f" object, got {backend!r}")
        if backend != "auto":
            get_backend(backend)      # BackendUnavailable now rather than at the first call
        return backend
    if not (hasattr(backend, "forward") and hasattr(backend, "backward")):
        raise TypeError(f"backend: expected a name or a gpurnn backend object, got "
                        f"{type(backend).__name__}")
    token = f"object-{id(backend):x}"
    _BACKEND_OBJECTS[token] = backend     # kept alive: a compiled graph may name it later
    return token


class _LayerRunner:
    """A one-layer gpurnn module (both directions), shared by every call of layers with
    one configuration, dtype and device.

    Each call passes the live parameter views and takes the tape away, so any number of
    forwards may be pending before their backwards (reused modules, gradcheck,
    checkpointing). The lock serialises calls from several threads (DataParallel).
    """

    def __init__(self, config, backend, dtype):
        kwargs = dict(num_layers=1, bias=config.bias, batch_first=False, dropout=0.0,
                      bidirectional=config.bidirectional, backend=backend, dtype=dtype, seed=0)
        if config.proj_size:     # states as the pair (h, c): the same tuples as Recurrent's
            self.module = _layers.LSTM(config.input_size, config.hidden_size,
                                       proj_size=config.proj_size, **kwargs)
        else:
            self.module = _layers.Recurrent(config.spec, config.input_size, config.hidden_size,
                                            **kwargs)   # tuple states, one array per state
        self.backend = backend
        self.config = config
        self.names = _param_names(0, config.bidirectional, config.bias,
                                  config.proj_size > 0)   # gpurnn's are torch's
        self.tape_layouts = {}
        self.lock = threading.Lock()

    def forward(self, x, state0, lengths, params):
        """Arrays in: x (T, B, I), state0 a tuple of (D, B, H) or None, host lengths or None.
        Returns (out, state_n tuple, tape)."""
        with self.lock:
            (out, state_n), tape = self.module.forward_tape(
                x, state0, lengths, params=OrderedDict(zip(self.names, params)))
        return out, tuple(state_n), tape

    def backward(self, tape, dout, dstate_n, need_dx=True):
        """Returns (dx (None unless need_dx), dstate0 tuple, grads in ``names`` order)."""
        with self.lock:
            dx, dstate0, grads = self.module.backward_tape(tape, dout, dstate_n, need_dx=need_dx)
        return dx, tuple(dstate0), [grads[n] for n in self.names]


def _param_names(layer, bidirectional, bias, proj=False):
    """torch's names of one layer's parameters, in the order the layer ops take them (and
    torch's: weight_hr after the biases with a projection)."""
    kinds = (("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())
             + (("weight_hr",) if proj else ()))
    return [f"{k}_l{layer}{s}" for s in (("", "_reverse") if bidirectional else ("",)) for k in kinds]


_runners = {}
_runners_lock = threading.Lock()


def _runner_for(key, dtype, device):
    """The runner and converter behind a layer key for tensors of this dtype and device."""
    index = (key, dtype, str(device))
    runner = _runners.get(index)
    if runner is None:
        config = _LayerConfig.from_key(key)
        requested = _BACKEND_OBJECTS.get(config.backend, config.backend)
        backend = _resolve_backend(requested, device, dtype)
        with _runners_lock:
            runner = _runners.setdefault(
                index, _LayerRunner(config, backend, _TORCH_TO_NUMPY_DTYPE[dtype]))
    return runner, _converter(device)


# --------------------------------------------------------------------------- the tape as tensors
# The tape is the backend's opaque dict. Custom ops return tensors only, so its arrays
# travel as tensors (zero-copy) and everything else (the structure, cell names, flags, the
# CPU backend's split plan) stays on the runner as a _TapeLayout, one per shape signature:
# those values depend on shapes only, so every tape of that signature shares them.
# Arrays that are views of the op's own inputs or outputs (x, the weights) travel as a
# reference to that input: a custom op's outputs may not alias its inputs.
# This pair of functions is the only place that knows what a tape is made of.

class _TapeLayout(NamedTuple):
    tree: object          # the tape with a _Ref in place of each array
    metas: tuple          # (shape, torch dtype, device) of each tape tensor, for the fake op


class _Ref(NamedTuple):
    source: str           # "tape": tensors[index]; "known": the op's known[index]
    index: int
    kind: str = ""        # "numpy", "cupy" or "numba": the array type to rebuild


def _array_kind(a):
    if isinstance(a, np.ndarray):
        return "numpy"
    if hasattr(a, "__cuda_array_interface__"):
        return "numba" if type(a).__module__.startswith("numba") else "cupy"
    return None


def _array_span(a):
    """(start, end, shape, strides, dtype) of a non-empty array: equal spans are equal views."""
    iface = a.__array_interface__ if isinstance(a, np.ndarray) else a.__cuda_array_interface__
    start = iface["data"][0]
    end = start + sum((n - 1) * abs(s) for n, s in zip(a.shape, a.strides)) + a.itemsize
    return start, end, tuple(a.shape), tuple(a.strides), np.dtype(a.dtype).str


def _memory_owner(a):
    """Arrays with different owners cannot overlap (device arrays: one group, compared by span)."""
    if not isinstance(a, np.ndarray):
        return None
    while isinstance(a.base, np.ndarray):
        a = a.base
    return id(a if a.base is None else a.base)


def _map_tree(fn, v):
    """fn applied to every leaf of nested dicts, lists and tuples (named ones included)."""
    if isinstance(v, dict):
        return {k: _map_tree(fn, x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) and not isinstance(v, _Ref):
        items = [_map_tree(fn, x) for x in v]
        return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)
    return fn(v)


def _tape_to_tensors(tape, known):
    """tape -> (tensors, layout); ``known`` are the op's input and output arrays."""
    refs = {id(a): _Ref("known", j) for j, a in enumerate(known)}
    peers = {}                       # memory owner -> [(array, its ref)] seen so far
    for a in known:
        peers.setdefault(_memory_owner(a), []).append((a, refs[id(a)]))
    tensors = []

    def encode(v):
        kind = _array_kind(v)
        if kind is None:
            return v
        ref = refs.get(id(v))
        if ref is None:
            group = peers.setdefault(_memory_owner(v), [])
            span = _array_span(v) if group and v.size else None
            spans = [(_array_span(a), r) for a, r in group if a.size] if span else []
            ref = next((r for s, r in spans if s == span), None)     # a view seen already
            if ref is None:
                t = _numpy_to_tensor(v) if kind == "numpy" else torch.as_tensor(v)
                if any(span[0] < s[1] and s[0] < span[1] for s, _ in spans):
                    t = t.clone()    # overlaps an input, an output or another tape array
                ref = _Ref("tape", len(tensors), kind)
                tensors.append(t)
                group.append((v, ref))
            refs[id(v)] = ref
        return ref

    tree = _map_tree(encode, tape)
    return tensors, _TapeLayout(tree, tuple((tuple(t.shape), t.dtype, t.device) for t in tensors))


def _tape_from_tensors(tensors, layout, known):
    """The inverse of _tape_to_tensors: the backend's tape, its arrays views of ``tensors``."""
    def native(t, kind):
        if kind == "numpy":
            return t.detach().numpy()
        if kind == "cupy":
            import cupy
            return cupy.asarray(t.detach())
        from numba import cuda
        return cuda.from_cuda_array_interface(t.__cuda_array_interface__, owner=t, sync=False)

    def decode(v):
        if not isinstance(v, _Ref):
            return v
        return known[v.index] if v.source == "known" else native(tensors[v.index], v.kind)

    return _map_tree(decode, layout.tree)


# --------------------------------------------------------------------------- one layer call
# Two front-ends share these bodies: eager calls go through _LayerFunction, which keeps the
# tape object in its autograd context (the fastest path: a custom op's dispatch costs about
# 0.1 ms a call); under torch.compile / torch.export the layer is the custom op pair
# gpurnn::layer_forward / gpurnn::layer_backward, with the tape as tensors.

def _host_lengths(lengths, T, B):
    if lengths is None:
        return None
    return check_lengths(lengths.detach().cpu().numpy(), B, T)


def _forward_body(key, x, state0, lengths, params):
    """Run a layer: (out, state_n list) as tensors, the tape, and the arrays the tape may
    view (its inputs and outputs, for _tape_to_tensors). x (T, B, I) floats, or (T, B)
    integer token ids (the first layer; the weights' dtype picks the runner)."""
    runner, conv = _runner_for(key, params[0].dtype, x.device)
    lens = _host_lengths(lengths, x.shape[0], x.shape[1])
    with conv.running(runner.backend):
        a = conv.to_array
        x_a, s0_a, p_a = a(x), [a(s) for s in state0], [a(p) for p in params]
        out, state_n, tape = runner.forward(x_a, tuple(s0_a) or None, lens, p_a)
        result = conv.to_tensor(out), [conv.to_tensor(s) for s in state_n]
    return result, tape, [x_a, *s0_a, *([] if lens is None else [lens]), *p_a, out, *state_n]


def _kernel_backward(key, x, tape, dout, dstate_n, need_dx):
    """gpurnn's BPTT through ``tape``: (dx, dstate0 list, dparams list) as tensors.
    dstate_n: a list of tensors, or [] for zeros. dx: None unless need_dx (the dX GEMM is
    then not run; token-id x never has one)."""
    runner, conv = _runner_for(key, dout.dtype, x.device)
    with conv.running(runner.backend):
        a = conv.to_array
        dx, dstate0, grads = runner.backward(tape, a(dout), [a(d) for d in dstate_n] or None,
                                             need_dx)
        return (None if dx is None else conv.to_tensor(dx), [conv.to_tensor(d) for d in dstate0],
                [conv.to_tensor(g) for g in grads])


def _backward_body(key, x, state0, lengths, params, dout, dstate_n, kernel, need_dx):
    """Gradients for (x, state0, params) from the incoming ones (None = zero).
    ``kernel(dout, dstate_n)`` runs gpurnn's BPTT; with create_graph=True (grad mode on in
    a backward) the gradients must themselves be differentiable, so the torch-ops
    recurrence is differentiated instead. need_dx: whether x's gradient is wanted
    (ctx.needs_input_grad); dx is None otherwise."""
    config = _LayerConfig.from_key(key)
    T, B = x.shape[:2]
    w = params[0]                   # x may be token ids: the float dtype is the weights'
    if dout is None:
        dout = w.new_zeros((T, B, config.num_directions * config.out_size))
    if any(d is not None for d in dstate_n):
        dstate_n = [w.new_zeros((config.num_directions, B, config.state_size(k))) if d is None
                    else d.contiguous() for k, d in enumerate(dstate_n)]
    else:
        dstate_n = []
    if torch.is_grad_enabled():
        dx, dstate0, dparams = _differentiable_grads(config, x, state0, lengths, params, dout,
                                                     dstate_n)
    else:
        dx, dstate0, dparams = kernel(dout.contiguous(), dstate_n)
    return dx if need_dx else None, list(dstate0)[:len(state0)], list(dparams)


class _LayerFunction(torch.autograd.Function):
    """The eager front-end: one layer (both directions) inside torch.autograd.

    apply(key, lengths, n_state0, x, *state0, *params) -> (out, *state_n)."""

    @staticmethod
    def forward(ctx, key, lengths, n_state0, x, *tensors):
        state0, params = list(tensors[:n_state0]), list(tensors[n_state0:])
        (out, state_n), tape, _ = _forward_body(key, x, state0, lengths, params)
        ctx.key, ctx.lengths, ctx.n_state0, ctx.tape = key, lengths, n_state0, tape
        # Saved also so that torch's version counters catch an in-place change (an
        # optimizer.step()) of memory the tape views, between forward and backward.
        ctx.save_for_backward(x, *tensors)
        ctx.set_materialize_grads(False)
        return (out, *state_n)

    @staticmethod
    def backward(ctx, dout, *dstate_n):
        x, *tensors = ctx.saved_tensors
        state0, params = tensors[:ctx.n_state0], tensors[ctx.n_state0:]
        need_dx = ctx.needs_input_grad[3]
        dx, dstate0, dparams = _backward_body(
            ctx.key, x, state0, ctx.lengths, params, dout, dstate_n,
            lambda do, ds: _kernel_backward(ctx.key, x, ctx.tape, do, ds, need_dx), need_dx)
        return (None, None, None, dx, *dstate0, *dparams)


# --------------------------------------------------------------------------- custom ops
def _tape_signature(x, state0, lengths):
    """What a tape's layout may depend on besides the runner: shapes, which are given, and
    whether x is token ids (their tape keeps the ids, not floats)."""
    return int(x.shape[0]), int(x.shape[1]), x.dim() == 2, len(state0), lengths is not None


def _forward_with_tape_tensors(key, x, state0, lengths, params, keep_tape):
    (out, state_n), tape, known = _forward_body(key, x, state0, lengths, params)
    if not keep_tape:
        return out, state_n, []
    tensors, layout = _tape_to_tensors(tape, known)
    runner, _ = _runner_for(key, params[0].dtype, x.device)
    sig = _tape_signature(x, state0, lengths)
    first = runner.tape_layouts.setdefault(sig, layout)
    if first.metas != layout.metas:
        raise RuntimeError(f"gpurnn.torch: backend {runner.backend.name!r} returned tapes of two"
                           f" layouts for the same shapes {sig}; the bridge needs one per shape")
    return out, state_n, tensors


@torch.library.custom_op("gpurnn::layer_forward", mutates_args=())
def _layer_forward(key: str, x: Tensor, state0: List[Tensor], lengths: Optional[Tensor],
                   params: List[Tensor], keep_tape: bool) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """One layer, both directions. x (T, B, I) contiguous, or (T, B) integer token ids;
    state0: [] (zeros) or one (D, B, H) tensor per state; lengths: host (B,) ints or None;
    params in _param_names order. Returns out (T, B, D*H), one (D, B, H) tensor per state
    (with proj_size P: out (T, B, D*P), h (D, B, P), c (D, B, H)), and the tape (empty
    unless keep_tape)."""
    return _forward_with_tape_tensors(key, x, state0, lengths, params, keep_tape)


@_layer_forward.register_fake
def _layer_forward_fake(key, x, state0, lengths, params, keep_tape):
    config = _LayerConfig.from_key(key)
    T, B = x.shape[:2]
    D = config.num_directions
    w = params[0]                   # the float dtype (x may be token ids)
    out = w.new_empty((T, B, D * config.out_size))
    state_n = [w.new_empty((D, B, config.state_size(k))) for k in range(config.n_states)]
    tape = []
    if keep_tape:
        tape = [torch.empty(shape, dtype=dtype, device=device)
                for shape, dtype, device in _tape_layout(key, x, state0, lengths, params).metas]
    return out, state_n, tape


def _tape_layout(key, x, state0, lengths, params):
    """The tape layout for these shapes, from an earlier call or from one forward on zeros
    (what the fake op runs at compile time the first time it meets a shape)."""
    runner, _ = _runner_for(key, params[0].dtype, x.device)
    sig = _tape_signature(x, state0, lengths)
    if sig not in runner.tape_layouts:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        T, B = sig[:2]
        with unset_fake_temporarily():      # real zeros, thrown away after
            zeros = lambda t: torch.zeros(tuple(int(n) for n in t.shape), dtype=t.dtype,  # noqa: E731
                                          device=t.device)
            _forward_with_tape_tensors(
                key, zeros(x), [zeros(s) for s in state0],
                None if lengths is None else torch.full((B,), T, dtype=torch.int64),
                [zeros(p) for p in params], keep_tape=True)
    return runner.tape_layouts[sig]


@torch.library.custom_op("gpurnn::layer_backward", mutates_args=())
def _layer_backward(key: str, x: Tensor, state0: List[Tensor], lengths: Optional[Tensor],
                    params: List[Tensor], out: Tensor, state_n: List[Tensor], tape: List[Tensor],
                    dout: Tensor, dstate_n: List[Tensor],
                    need_dx: bool) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """gpurnn's BPTT through a layer_forward's tape: (dx, dstate0 per state, dparams).
    dstate_n: one tensor per state, or [] for zeros. need_dx False: the dX GEMM is not run
    and dx is an empty (0,) tensor (a custom op cannot return None)."""
    runner, conv = _runner_for(key, dout.dtype, x.device)
    a = conv.to_array
    lens = _host_lengths(lengths, x.shape[0], x.shape[1])
    known = [a(x), *[a(s) for s in state0], *([] if lens is None else [lens]),
             *[a(p) for p in params], a(out), *[a(s) for s in state_n]]
    layout = runner.tape_layouts[_tape_signature(x, state0, lengths)]
    dx, dstate0, dparams = _kernel_backward(key, x, _tape_from_tensors(tape, layout, known), dout,
                                            dstate_n, need_dx)
    return dx if need_dx else dout.new_empty((0,)), dstate0, dparams


@_layer_backward.register_fake
def _layer_backward_fake(key, x, state0, lengths, params, out, state_n, tape, dout, dstate_n,
                         need_dx):
    return (x.new_empty(x.shape) if need_dx else dout.new_empty((0,)),
            [s.new_empty(s.shape) for s in state_n], [p.new_empty(p.shape) for p in params])


def _setup_context(ctx, inputs, output):
    key, x, state0, lengths, params, keep_tape = inputs
    out, state_n, tape = output
    ctx.mark_non_differentiable(*tape)
    ctx.key = key
    ctx.sizes = (len(state0), lengths is not None, len(params), len(state_n))
    ctx.save_for_backward(x, *state0, *([] if lengths is None else [lengths]), *params, out,
                          *state_n, *tape)


def _layer_forward_backward(ctx, dout, dstate_n, _dtape):
    n_state0, has_lengths, n_params, n_states = ctx.sizes
    it = iter(ctx.saved_tensors)
    take = lambda n: [next(it) for _ in range(n)]  # noqa: E731
    x, state0 = next(it), take(n_state0)
    lengths = next(it) if has_lengths else None
    params, out, state_n, tape = take(n_params), next(it), take(n_states), list(it)
    need_dx = bool(ctx.needs_input_grad[1])      # False for ids or x.requires_grad=False
    dx, dstate0, dparams = _backward_body(
        ctx.key, x, state0, lengths, params, dout, dstate_n,
        lambda do, ds: _layer_backward(ctx.key, x, state0, lengths, params, out, state_n, tape,
                                       do, ds, need_dx), need_dx)
    return None, dx, dstate0, None, dparams, None


_layer_forward.register_autograd(_layer_forward_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- torch-ops recurrence
# The same recurrence in torch ops, differentiated by torch's autograd: the double backward
# (create_graph=True) path. The cell's own forward (gpurnn.define_cell) is the step: its
# gpurnn.ops dispatch to torch functions on tensors, cell(xg, hg, state) -> new states.

def torch_step(cell):
    """A cell's one-step math on torch tensors: its definition's forward function."""
    return get_cell(cell).forward


def _reverse_within_length(a, lengths):
    """a (T, B, F) with each row's first lengths[b] steps reversed (the rest in place)."""
    if lengths is None:
        return a.flip(0)
    T = a.shape[0]
    t = torch.arange(T, device=a.device)[:, None]
    L = lengths.to(a.device)[None, :]
    idx = torch.where(t < L, L - 1 - t, t)
    return a.gather(0, idx[:, :, None].expand_as(a))


def _input_projection(x, w_ih, b_ih):
    """x W_ih^T + b_ih for floats x (T, B, I); for token ids x (T, B) the gather of W_ih's
    columns (gpurnn.tokens), which is what F.embedding does with the table W_ih^T."""
    if x.is_floating_point():
        return F.linear(x, w_ih, b_ih)
    g = F.embedding(x, w_ih.t())
    return g if b_ih is None else g + b_ih


def _torch_layer(config, x, state0, lengths, params):
    """One layer, both directions, in torch ops: (out (T, B, D*R), [state (D, B, .)...]);
    R = proj_size with a projection (h = W_hr r after the cell), else H."""
    step, H = torch_step(config.spec), config.hidden_size
    T, B = x.shape[:2]
    valid = None if lengths is None else (torch.arange(T)[:, None] < lengths[None, :]).to(x.device)
    proj = config.proj_size > 0
    per_direction = (4 if config.bias else 2) + proj
    outs, finals = [], []
    for d in range(config.num_directions):
        w_ih, w_hh, *rest = params[d * per_direction:(d + 1) * per_direction]
        w_hr = rest.pop() if proj else None
        b_ih, b_hh = rest if config.bias else (None, None)
        seq = x if d == 0 else _reverse_within_length(x, lengths)
        state = (tuple(s[d] for s in state0) if state0
                 else tuple(w_ih.new_zeros(B, config.state_size(k)) for k in range(config.n_states)))
        xg_all = _input_projection(seq, w_ih, b_ih).split(H, -1)
        ys = []
        for t in range(T):
            new = step([g[t] for g in xg_all], F.linear(state[0], w_hh, b_hh).split(H, -1), state)
            if proj:
                new = (F.linear(new[0], w_hr), *new[1:])
            if valid is not None:      # past a row's length: keep the state, output zero
                m = valid[t, :, None]
                new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
                ys.append(torch.where(m, new[0], torch.zeros_like(new[0])))
            else:
                ys.append(new[0])
            state = new
        y = torch.stack(ys)
        outs.append(y if d == 0 else _reverse_within_length(y, lengths))
        finals.append(state)
    return torch.cat(outs, -1), [torch.stack(s) for s in zip(*finals)]


def _differentiable_grads(config, x, state0, lengths, params, dout, dstate_n):
    """The layer's gradients as differentiable tensors: recompute it in torch ops and let
    autograd differentiate that (create_graph). Slower than gpurnn's BPTT; used only then.
    dstate_n: one tensor per state, or [] for zeros."""
    inputs = [x, *state0, *params]
    wanted = [t for t in inputs if t.requires_grad]
    with torch.enable_grad():
        out, state_n = _torch_layer(config, x, state0, lengths, params)
        outputs = [out, *state_n] if dstate_n else [out]
        got = torch.autograd.grad(outputs, wanted, [dout, *dstate_n], create_graph=True,
                                  allow_unused=True)
    grads = dict(zip(map(id, wanted), got))
    full = [grads.get(id(t)) for t in inputs]
    full = [torch.zeros_like(t) if g is None else g for g, t in zip(full, inputs)]
    return full[0], full[1:1 + len(state0)], full[1 + len(state0):]


# --------------------------------------------------------------------------- modules


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
        be = get_backend(requested, device="cpu")     # "auto": cpu, else numpy (gpurnn.backend)
    if dname not in be.dtypes:
        raise UnsupportedError(
            f"gpurnn.torch: backend {be.name!r} supports dtypes {tuple(be.dtypes)}, got {dname};"
            f" convert the module and inputs with .to({tuple(be.dtypes)[0]}), or use a backend"
            f" that runs {dname} (on CPU tensors: backend='numpy' or 'cpu')")
    return be


def _is_token_ids(x):
    """An integer tensor is token ids (one-hot rows); a bool tensor is neither kind."""
    if x.dtype == torch.bool:
        raise DtypeError("input: expected floats (T, B, input_size) or integer token ids (T, B),"
                         " got dtype torch.bool (a one-hot mask: pass the ids, or convert it with"
                         " .float())")
    return not (x.is_floating_point() or x.is_complex())


def _reject_proj_size(kwargs):
    """torch.nn.RNN and GRU take proj_size only to refuse it, with this error."""
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class _Stack:
    """What every gpurnn.torch module does with its parameters and inputs: a stack of
    layers of one cell, each layer one op (gpurnn's kernels), dropout between layers.
    The module provides _cell (a CellSpec), input_size, hidden_size, num_layers, bias,
    batch_first, dropout, bidirectional, backend and its parameters in torch's names."""

    _cell = None

    def __setattr__(self, name, value):
        if name == "backend":        # validated and named for the layer ops whenever it is set
            super().__setattr__("_backend_key", _backend_token(value))
        super().__setattr__(name, value)

    def __setstate__(self, state):   # unpickled / deep-copied: a backend object is a new one
        super().__setstate__(state)
        super().__setattr__("_backend_key", _backend_token(self.backend))

    def _proj(self):
        return getattr(self, "proj_size", 0) or 0

    def _layer_key(self, layer):
        D = 2 if self.bidirectional else 1
        in_size = self.input_size if layer == 0 else D * (self._proj() or self.hidden_size)
        return _LayerConfig(_cell_token(self._cell), in_size, self.hidden_size, self.bias,
                            self.bidirectional, self._backend_key, self._proj()).key

    def _layer_params(self, layer):
        return [getattr(self, n) for n in _param_names(layer, self.bidirectional, self.bias,
                                                       self._proj() > 0)]

    def _first_weight(self):
        return getattr(self, _param_names(0, self.bidirectional, self.bias)[0])

    def _run(self, input, states, names, lengths):
        """input as torch.nn takes it (padded tensor, unbatched tensor or PackedSequence);
        states: one entry per cell state (tensor or None), or None; names: their names in
        errors. Returns (out like input, list of final states (L*D, B, H) or (L*D, H))."""
        packed = isinstance(input, PackedSequence)
        batched = True
        if packed:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; pass either a"
                                 " PackedSequence or a padded tensor with lengths=, not both")
            x, lengths = pad_packed_sequence(input, batch_first=False)   # original batch order
            tokens = _is_token_ids(x)
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input: expected a torch.Tensor or a PackedSequence, got "
                                f"{type(input).__name__}")
            tokens = _is_token_ids(input)
            rank = 2 if tokens else 3        # batched; one less unbatched
            if input.dim() not in (rank - 1, rank):
                raise ValueError(f"input: expected {rank - 1} (unbatched) or {rank} dimensions"
                                 f"{' of token ids' if tokens else ''}, got shape "
                                 f"{tuple(input.shape)}")
            batched = input.dim() == rank
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            if lengths is not None:          # validated by the layer op, on the host
                lengths = torch.as_tensor(lengths).to("cpu")
        T, B = x.shape[:2]
        shape = tuple(input.shape if not packed else x.shape)
        if not tokens and x.shape[2] != self.input_size:
            raise ShapeError(f"input: expected input_size {self.input_size} in the last dimension,"
                             f" got shape {shape}")
        if T == 0:
            raise ShapeError(f"input: expected sequence length to be larger than 0 in RNN, got"
                             f" shape {shape}")
        w0 = self._first_weight()
        device, dtype = w0.device, w0.dtype
        if tokens:
            if not torch.compiler.is_compiling():     # data-dependent: the layer op checks too
                check_token_ids("input", (x if packed else input).detach().cpu().numpy(),
                                self.input_size)
        elif x.dtype != dtype:
            raise DtypeError(f"input: expected dtype {dtype} (the weights' dtype), got {x.dtype};"
                             f" convert with input.to({dtype}) or the model with model.to({x.dtype})")
        if x.device != device:
            raise ValueError(f"input: expected a tensor on {device} (the weights' device), got one"
                             f" on {x.device}")
        if dtype not in _TORCH_TO_NUMPY_DTYPE:
            _resolve_backend(self.backend, device, dtype)     # raises UnsupportedError
        x = x.contiguous()

        state0 = self._check_states(states, names, B, batched, dtype, device)
        L, D = self.num_layers, (2 if self.bidirectional else 1)
        layer_in, finals = x, []
        for layer in range(L):
            params = self._layer_params(layer)
            s0 = [s[layer * D:(layer + 1) * D] for s in state0]
            key = self._layer_key(layer)
            if torch.compiler.is_compiling():
                keep_tape = torch.is_grad_enabled() and any(
                    t.requires_grad for t in (layer_in, *s0, *params))
                out, state_n, _ = _layer_forward(key, layer_in, s0, lengths, params, keep_tape)
            else:
                out, *state_n = _LayerFunction.apply(key, lengths, len(s0), layer_in, *s0, *params)
            finals.append(state_n)
            if self.training and self.dropout > 0 and layer < L - 1:
                out = F.dropout(out, self.dropout, training=True)
            layer_in = out
        out = layer_in
        states = [s[0] if L == 1 else torch.cat(s, 0) for s in zip(*finals)]

        if packed:
            out = _pack_like(out, input)
        elif not batched:
            out = out.squeeze(1)
            states = [s.squeeze(1) for s in states]
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, states

    def _check_states(self, states, names, B, batched, dtype, device):
        """The initial states as a list of (L*D, B, H) tensors, one per state, or [] for
        zeros; a None entry starts at zero."""
        L, D = self.num_layers, (2 if self.bidirectional else 1)
        if states is None or all(s is None for s in states):
            return []
        states = list(states)
        for i, (s, n) in enumerate(zip(states, names)):
            H = (self._proj() or self.hidden_size) if i == 0 else self.hidden_size
            size = "proj_size" if i == 0 and self._proj() else "hidden_size"
            expected = (L * D, B, H) if batched else (L * D, H)
            if s is None:
                s = torch.zeros(expected, dtype=dtype, device=device)
            if not isinstance(s, torch.Tensor):
                raise TypeError(f"{n}: expected a torch.Tensor, got {type(s).__name__}")
            if tuple(s.shape) != expected:
                raise ShapeError(f"{n}: expected shape {expected} (num_layers*num_directions, "
                                 f"{'batch, ' if batched else ''}{size}), got {tuple(s.shape)}")
            if s.dtype != dtype:
                raise DtypeError(f"{n}: expected dtype {dtype} (the weights' dtype), got {s.dtype}")
            if s.device != device:
                raise ValueError(f"{n}: expected a tensor on {device} (the weights' device), got"
                                 f" one on {s.device}")
            states[i] = (s if batched else s.unsqueeze(1)).contiguous()
        return states


class _GpurnnRNNBase(_Stack, torch.nn.RNNBase):
    """torch.nn.RNNBase whose computation is gpurnn's. Use RNN, LSTM or GRU.

    Not a subclass of torch.nn.LSTM/GRU/RNN on purpose: torch.compile refuses to trace those.
    """

    def __init__(self, mode, *args, backend="auto", **kwargs):
        super().__init__(mode, *args, **kwargs)      # torch's own argument checks and messages
        dtype = getattr(self, self._flat_weights_names[0]).dtype
        if dtype not in _TORCH_TO_NUMPY_DTYPE:
            raise UnsupportedError(
                f"gpurnn.torch: dtype {dtype} is not supported (gpurnn runs float32 and float64);"
                f" use dtype=torch.float32 or torch.float64, or torch.nn's modules for {dtype}")
        self.backend = backend

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"

    def forward(self, input, hx=None, lengths=None):
        """As torch.nn's forward, plus ``lengths`` (B,) for right-padded (non-packed) input."""
        is_lstm = self._cell.name == "lstm"
        if hx is None:
            states = None
        elif is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h0, c0) for LSTM, got {type(hx).__name__}")
            states = hx
        else:
            if isinstance(hx, (tuple, list)):
                raise TypeError(f"hx: expected one tensor h0 for {type(self).__name__}, got a"
                                f" {type(hx).__name__}")
            states = (hx,)
        out, states = self._run(input, states, ("h0", "c0"), lengths)
        return (out, tuple(states)) if is_lstm else (out, states[0])


class Recurrent(_Stack, torch.nn.Module):
    """A stack of layers of any gpurnn cell (gpurnn.define_cell) as a torch.nn.Module.

    Recurrent(cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
              dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend='auto')
    forward(input, state0=None, lengths=None) -> (output, state_n)
        input   (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence
        state0  tuple of S tensors (L*D, B, H) (each may be None: zeros), or None
        state_n tuple of S tensors (L*D, B, H); output the sequence of h = states[0]

    Parameters as gpurnn.Recurrent and torch.nn: weight_ih_l{k}[_reverse] (G*H, I or D*H),
    weight_hh_l{k} (G*H, H), bias_ih_l{k}, bias_hh_l{k} (G*H,), gate rows in the cell's
    gate order, init U(-1/sqrt(H), 1/sqrt(H)). Same kernels as gpurnn.Recurrent, inside
    torch.autograd (and torch.compile, as the built-ins)."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 *, backend="auto"):
        super().__init__()
        self._cell = get_cell(cell)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        G, H, D = self._cell.n_gates, hidden_size, 2 if bidirectional else 1
        factory = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        if factory["dtype"] not in _TORCH_TO_NUMPY_DTYPE:
            raise UnsupportedError(f"gpurnn.torch: dtype {factory['dtype']} is not supported"
                                   " (gpurnn runs float32 and float64)")
        for layer in range(num_layers):
            names = _param_names(layer, self.bidirectional, self.bias)
            for name in names:
                in_size = input_size if layer == 0 else D * H
                shape = {"weight_ih": (G * H, in_size), "weight_hh": (G * H, H)}.get(
                    name.split("_l")[0], (G * H,))
                self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()
        self.backend = backend

    def reset_parameters(self):
        bound = 1.0 / self.hidden_size ** 0.5
        for p in self.parameters():
            torch.nn.init.uniform_(p, -bound, bound)

    def extra_repr(self):
        return (f"{self._cell.name!r}, {self.input_size}, {self.hidden_size}, num_layers="
                f"{self.num_layers}, bias={self.bias}, batch_first={self.batch_first}, dropout="
                f"{self.dropout}, bidirectional={self.bidirectional}, backend={self.backend!r}")

    def forward(self, input, state0=None, lengths=None):
        S, names = self._cell.n_states, self._cell.states
        if state0 is not None:
            if isinstance(state0, torch.Tensor) and S == 1:
                state0 = (state0,)
            if not isinstance(state0, (tuple, list)) or len(state0) != S:
                raise TypeError(f"state0: expected a tuple of {S} states {names} for cell"
                                f" {self._cell.name!r} (each may be None), got"
                                f" {type(state0).__name__}")
        out, states = self._run(input, state0, [f"state0[{k}] ({n})" for k, n in enumerate(names)],
                                lengths)
        if not states:
            raise AssertionError("no state returned")
        return out, tuple(states)


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
    """Elman RNN (tanh or relu) as torch.nn.RNN, computed by gpurnn.

    RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
        batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
        *, backend='auto'), arguments taken as torch.nn.RNN takes them."""

    def __init__(self, *args, **kwargs):
        _reject_proj_size(kwargs)
        if len(args) > 3:                  # torch.nn.RNN's positional nonlinearity
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self._cell = get_cell(f"rnn_{nonlinearity}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)
        self.nonlinearity = nonlinearity


class LSTM(_GpurnnRNNBase):
    """LSTM (gates i, f, g, o) as torch.nn.LSTM, computed by gpurnn; with proj_size P > 0
    (torch's projections: h = W_hr (o tanh c), weight_hr_l{k} (P, H)) too, on every
    backend (gpurnn.projection).

    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
         bidirectional=False, proj_size=0, device=None, dtype=None, *, backend='auto')"""

    _cell = get_cell("lstm")

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)


class GRU(_GpurnnRNNBase):
    """GRU (gates r, z, n; reset after the recurrent matmul) as torch.nn.GRU, computed by gpurnn.

    GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, device=None, dtype=None, *, backend='auto')"""

    _cell = get_cell("gru")

    def __init__(self, *args, **kwargs):
        _reject_proj_size(kwargs)
        super().__init__("GRU", *args, **kwargs)
