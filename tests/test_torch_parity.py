"""gpurnn layers vs torch.nn.RNN/LSTM/GRU holding the same weights: outputs, final
states and every gradient, with lengths through torch's PackedSequence. Skipped (with
the reason shown) when torch is not installed."""
import numpy as np
import pytest

import gpurnn
from helpers import ALL_CELLS, is_lstm, make_model, random_state, rel_err, state_parts

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the 160 parity tests with"
                            " torch.nn in this module (with the numpy and cpu backends) are skipped")

HOST_BACKENDS = [b for b in ("numpy", "cpu") if b in gpurnn.available_backends()]
TORCH_CLASSES = {"rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
                 "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
                 "lstm": (torch.nn.LSTM, {}), "gru": (torch.nn.GRU, {})}


def run_torch(cell, sd, x, state, lengths, g_out, g_state, dtype, **opts):
    """Forward + backward of torch.nn with gpurnn's weights; returns numpy results."""
    cls, extra = TORCH_CLASSES[cell]
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    module = cls(x.shape[-1], sd["weight_hh_l0"].shape[1], **extra, **opts).to(tdtype)
    module.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    xt = torch.tensor(x, requires_grad=True)
    st = tuple(torch.tensor(s, requires_grad=True) for s in state_parts(state))
    batch_first = opts.get("batch_first", False)
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
    out, st_n = module(inp, st if len(st) == 2 else st[0])
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                        total_length=x.shape[1 if batch_first else 0])
    loss = (out * torch.tensor(g_out)).sum()
    loss = loss + sum((s * torch.tensor(g)).sum() for s, g in zip(state_parts(st_n), g_state))
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return (out.detach().numpy(), [s.detach().numpy() for s in state_parts(st_n)],
            xt.grad.numpy(), [s.grad.numpy() for s in st], grads)


CASES = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True),
    dict(bidirectional=True, bias=False),
]


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("opts", CASES, ids=["plain", "2layer-bidir", "2layer-batchfirst", "bidir-nobias"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_matches_torch(cell, opts, with_lengths, dtype, tol, backend, rng):
    check_against_torch(cell, opts, with_lengths, dtype, tol, backend, rng)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("opts", CASES, ids=["plain", "2layer-bidir", "2layer-batchfirst", "bidir-nobias"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cuda_backend_matches_torch(cell, opts, with_lengths, rng):
    """float32 only: in the simulator every case costs seconds (CUDA threads are Python)."""
    if "cuda" not in gpurnn.available_backends():
        pytest.skip("cuda backend unavailable (numba-cuda missing)")
    check_against_torch(cell, opts, with_lengths, "float32", 1e-5, "cuda", rng)


def check_against_torch(cell, opts, with_lengths, dtype, tol, backend, rng):
    T, B, I, H = 7, 3, 5, 6
    model = make_model(cell, I, H, backend=backend, dtype=dtype, seed=21, **opts)
    x = rng.standard_normal((B, T, I) if model.batch_first else (T, B, I)).astype(dtype)
    lengths = np.array([7, 2, 5]) if with_lengths else None
    state = random_state(model, rng, B)
    out, st = model(x, state, lengths=lengths)
    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_state = [rng.standard_normal(s.shape).astype(dtype) for s in state_parts(st)]
    dx, dst = model.backward(g_out, tuple(g_state) if is_lstm(model) else g_state[0])

    t_out, t_st, t_dx, t_dst, t_grads = run_torch(cell, model.state_dict(), x, state, lengths,
                                                  g_out, g_state, dtype, **opts)
    assert rel_err(out, t_out) <= tol
    for a, b in zip(state_parts(st), t_st):
        assert rel_err(a, b) <= tol
    assert rel_err(dx, t_dx) <= tol
    for a, b in zip(state_parts(dst), t_dst):
        assert rel_err(a, b) <= tol
    assert set(model.grads) == set(t_grads)
    for name, g in t_grads.items():
        assert rel_err(model.grads[name], g) <= tol, name
