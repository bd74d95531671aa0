"""Wall-clock timing shared by the CPU-side benchmarks (the GPU one times with CUDA events),
and the check every benchmarked version passes before it is timed (as llm.c's dev/cuda
does): a version whose result is wrong gets no time."""
import itertools
import random
import time

import numpy as np

# float32 kernels against the float64 NumPy reference (normwise relative error per array)
TOLERANCE = 1e-4


class WrongResult(SystemExit):
    """A version's result differs from the reference: the benchmark stops, reporting no time."""


def time_calls(fn, repeats, warmup=2):
    """Seconds taken by each of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls
    (which also keep JIT compilation out of the numbers)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def interleaved_orders(names, repeats):
    """The order of each repeat: every permutation of ``names`` in turn (a fixed shuffle
    of them), so each version follows each other one equally often. A rotation would not
    do: rotating (a, b, c) keeps c's successor a in every repeat, and what runs right after
    torch meets its still-spinning OpenMP workers (B=32 LSTM native 26.9 ms after torch vs
    the bridge's 22.1 ms, RESULTS_cpu.md Tuning log 22)."""
    perms = list(itertools.permutations(names))
    random.Random(0).shuffle(perms)
    return [list(perms[r % len(perms)]) for r in range(repeats)]


def interleaved_times(runners, repeats, warmup=2, block=1):
    """Seconds of each call of each ``runners`` entry (name -> fn()), call by call with no
    settle time: each version meets the state (caches, spinning or parked worker threads)
    the previous one left, as in a user's loop; the orders (interleaved_orders) let each
    version follow each other one equally often. ``warmup`` untimed rounds first (JIT
    compile). ``block`` > 1: each turn is one untimed call and then ``block`` timed ones
    (``repeats`` x ``block`` times per version), as a program that runs only one of them
    meets it, with the versions still taking turns against drifting load."""
    names = list(runners)
    for name in names * warmup:
        runners[name]()
    times = {name: [] for name in names}
    for order in interleaved_orders(names, repeats):
        for name in order:
            if block > 1:
                runners[name]()
            times[name].extend(time_calls(runners[name], block, warmup=0))
    return times


def layer_flops(T, B, I, H, G):
    """FLOPs of the matrix products of one layer's forward + backward (G gates, I inputs, H
    units, T steps, B sequences); the pointwise cell work (a few FLOPs per gate element) is
    ignored. Each product is 2 x its multiply-adds."""
    forward = 2 * T * B * I * G * H + 2 * T * B * H * G * H      # input projection, recurrence
    backward = (2 * T * B * G * H * H                             # dh through W_hh
                + 2 * T * B * G * H * H                           # dW_hh
                + 2 * T * B * G * H * I                           # dW_ih
                + 2 * T * B * G * H * I)                          # dX
    return forward + backward


def rel_err(a, b):
    """Normwise relative error ||a - b|| / ||b|| (absolute where b is zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norm = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (norm if norm > 0 else 1.0))


def validate(version, got, want, tolerance=TOLERANCE):
    """Refuse to time ``version`` unless every array of ``want`` (name -> array) is in
    ``got`` with its shape, finite, within ``tolerance``; returns the worst error."""
    worst = 0.0
    for name, expected in want.items():
        if name not in got:
            raise WrongResult(f"{version}: no {name!r} to check against the reference: not timed")
        actual = np.asarray(got[name], np.float64)
        if actual.shape != np.shape(expected) or not np.all(np.isfinite(actual)):
            raise WrongResult(f"{version}: {name} has shape {actual.shape} (reference "
                              f"{np.shape(expected)}) or non-finite values: not timed")
        err = rel_err(actual, expected)
        if not err <= tolerance:
            raise WrongResult(f"{version}: {name} differs from the reference (normwise relative "
                              f"error {err:.3g} > {tolerance:g}): wrong result, not timed")
        worst = max(worst, err)
    return worst


def layer_reference(cell, weights, x, dout):
    """out, dx and every weight gradient ("grad <torch name>") of one gpurnn layer stack with
    ``weights`` (torch names) on x (T, B, I), dout (T, B, D*H): the NumPy reference, float64."""
    from gpurnn.layers import make_layer
    H = weights["weight_hh_l0"].shape[1]
    layers = 1 + max(int(k.split("_l")[1].split("_")[0]) for k in weights)
    model = make_layer(cell, x.shape[2], H, num_layers=layers, bias="bias_ih_l0" in weights,
                       bidirectional=any(k.endswith("_reverse") for k in weights),
                       backend="numpy", dtype="float64")
    model.load_state_dict({k: np.asarray(v, np.float64) for k, v in weights.items()})
    return gpurnn_results(model, np.asarray(x, np.float64), np.asarray(dout, np.float64))


def gpurnn_results(model, x, dout):
    """The same names as layer_reference for a gpurnn layer stack (one fresh forward +
    backward on host arrays; the gradients are zeroed again afterwards)."""
    from gpurnn.arrays import to_numpy
    model.zero_grad()
    out, _ = model(x)
    dx, _ = model.backward(dout)
    got = {"out": out, "dx": dx, **{f"grad {k}": g.copy() for k, g in model.grads.items()}}
    model.zero_grad()
    return {k: np.asarray(to_numpy(v)) for k, v in got.items()}


def torch_results(module, x, dout):
    """The same names as layer_reference for a torch.nn RNN/LSTM/GRU (one fresh forward +
    backward; the module's .grad fields are left as it found them: zeroed)."""
    import torch
    module.zero_grad(set_to_none=True)
    xt = torch.as_tensor(x).clone().requires_grad_()
    out, _ = module(xt)
    out.backward(torch.as_tensor(dout))
    got = {"out": out.detach().numpy(), "dx": xt.grad.numpy(),
           **{f"grad {k}": p.grad.numpy() for k, p in module.named_parameters()}}
    module.zero_grad(set_to_none=True)
    return got
