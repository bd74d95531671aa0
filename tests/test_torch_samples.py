"""gpurnn.torch.LSTM / GRU / RNN on PyTorch's own module samples: every input torch's test
suite builds for torch.nn.LSTM and torch.nn.RNN/GRU (torch.testing._internal.common_modules:
unbatched and batched inputs, given states, bidirectional, batch_first, no bias, LSTM
proj_size), float32 and float64, run on torch.nn and on gpurnn.torch with the same weights:
the same outputs, parameter gradients and input gradients.

Run:  python -m pytest tests/test_torch_samples.py -q
"""
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the 2 tests of this module"
                            " are skipped (pip install torch)")
common_modules = pytest.importorskip(
    "torch.testing._internal.common_modules",
    reason="torch's test samples need expecttest (pip install -e '.[test]'): the 2 tests of this"
           " module are skipped")

import gpurnn  # noqa: E402
import gpurnn.torch as gt  # noqa: E402

HOST = [b for b in ("cpu", "numpy") if b in gpurnn.available_backends()]


def samples(kind):
    """(class name, constructor kwargs, forward args) of torch's samples for ``kind``."""
    for dtype in (torch.float32, torch.float64):
        if kind == "LSTM":
            runs = [("LSTM", common_modules.module_inputs_torch_nn_LSTM(
                None, "cpu", dtype, requires_grad=True, training=True))]
        else:
            runs = [(name, common_modules.module_inputs_torch_nn_RNN_GRU(
                None, "cpu", dtype, requires_grad=True, training=True, is_rnn=name == "RNN"))
                for name in ("RNN", "GRU")]
        for name, infos in runs:
            for info in infos:
                yield dtype, name, info


def flat(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat(v)]
    return []


def fresh(arg):
    """A leaf copy of a forward argument (tensors, or tuples of them), requires_grad kept."""
    if isinstance(arg, torch.Tensor):
        return arg.detach().clone().requires_grad_(arg.requires_grad)
    if isinstance(arg, tuple):
        return tuple(fresh(a) for a in arg)
    return arg


def run(module, info):
    args = [fresh(a) for a in info.forward_input.args]
    out = module(*args, **info.forward_input.kwargs)
    sum(t.sum() for t in flat(out)).backward()
    return ([t.detach() for t in flat(out)], [p.grad for p in module.parameters()],
            [t.grad for t in flat(args) if t.requires_grad])


@pytest.mark.skipif(not HOST, reason="no host backend (numpy or cpu) here")
@pytest.mark.parametrize("kind", ["LSTM", "RNN_GRU"])
def test_torch_module_samples_match_torch_nn(kind):
    count = 0
    for dtype, name, info in samples(kind):
        torch.manual_seed(0)
        ref = getattr(torch.nn, name)(*info.constructor_input.args,
                                      **info.constructor_input.kwargs).to(dtype)
        mine = getattr(gt, name)(*info.constructor_input.args, **info.constructor_input.kwargs,
                                 backend=HOST[0]).to(dtype)
        mine.load_state_dict(ref.state_dict())
        expected, got = run(ref, info), run(mine, info)
        tol = 2e-5 if dtype == torch.float32 else 1e-10
        what = f"{name} {dtype} {info.constructor_input.kwargs}"
        for part, (a_list, b_list) in zip(("outputs", "parameter grads", "input grads"),
                                          zip(expected, got)):
            assert len(a_list) == len(b_list), (what, part)
            for a, b in zip(a_list, b_list):
                assert (a is None) == (b is None), (what, part)
                if a is not None:
                    torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=f"{what}: {part}")
        count += 1
    assert count >= 40, f"only {count} samples: torch's sample set changed"
