"""The training step's compiled passes (gpurnn.train.fused) against the plain NumPy path.

Output layer: the fused loss_and_backward vs the formulas written out here (float64) and
vs fused=False, on odd shapes, and its gradients by finite differences. Optimizers: a
fused step vs the plain one (bit for bit with the same clip factor), and the whole clip +
update sequence vs the in-place clip_grad_norm + plain step that the trainer ran before.
"""
import numpy as np
import pytest

from helpers import numeric_grad

from gpurnn.train.losses import OutputLayer
from gpurnn.train.optim import SGD, Adam, clip_grad_norm, clip_scale, global_norm


def reference_head(h, w, b, targets, reduction):
    """(loss, dW, db, dH) of mean/sum softmax cross-entropy of h W + b, in float64."""
    h, w, b = (np.asarray(a, np.float64) for a in (h, w, b))
    logits = h @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(targets))
    n = len(targets) if reduction == "mean" else 1
    loss = -np.log(p[rows, targets]).sum() / n
    dlogits = p.copy()
    dlogits[rows, targets] -= 1
    dlogits /= n
    return loss, h.T @ dlogits, dlogits.sum(axis=0), dlogits @ w.T


def heads(hidden, vocab, dtype, rng):
    """A fused and a plain output layer with the same (random, non-zero bias) weights."""
    fused, plain = (OutputLayer(hidden, vocab, dtype, seed=3, fused=f) for f in (True, False))
    bias = rng.standard_normal(vocab).astype(dtype)
    for layer in (fused, plain):
        layer.parameters()["bias"][:] = bias
    return fused, plain


TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_head_matches_the_formulas_and_the_plain_path(rng, dtype, reduction):
    N, Hd, V = 37, 13, 11
    fused, plain = heads(Hd, V, dtype, rng)
    h = (2 * rng.standard_normal((N, Hd))).astype(dtype)
    y = rng.integers(0, V, N)
    loss, dw, db, dh = reference_head(h, fused.parameters()["weight"], fused.parameters()["bias"],
                                      y, reduction)
    got_loss, got_dh = fused.loss_and_backward(h, y, reduction)
    plain_loss, plain_dh = plain.loss_and_backward(h, y, reduction)
    assert (fused.path, plain.path) == ("fused", "plain: fused=False")
    assert got_dh.dtype == np.dtype(dtype) and got_dh.shape == (N, Hd)
    for got in ((got_loss, got_dh, fused.grads), (plain_loss, plain_dh, plain.grads)):
        assert got[0] == pytest.approx(loss, rel=TOL[dtype]["rtol"])
        np.testing.assert_allclose(got[1], dh, **TOL[dtype])
        np.testing.assert_allclose(got[2]["weight"], dw, **TOL[dtype])
        np.testing.assert_allclose(got[2]["bias"], db, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_head_split_into_row_shares_on_the_cpu_backend(rng, dtype):
    """On backend="cpu" each share of the rows (run_rows: 3 threads, 64+ rows a share) runs
    its GEMMs and passes; the shares' dW, db and loss summed match the formulas."""
    from gpurnn.cpu.backend import CpuBackend
    N, Hd, V = 211, 13, 11                      # 70, 70, 71 rows
    head = OutputLayer(Hd, V, dtype, seed=3, backend=CpuBackend(threads=3))
    head.parameters()["bias"][:] = rng.standard_normal(V)
    h = (2 * rng.standard_normal((N, Hd))).astype(dtype)
    y = rng.integers(0, V, N)
    loss, dw, db, dh = reference_head(h, head.parameters()["weight"], head.parameters()["bias"],
                                      y, "mean")
    got_loss, got_dh = head.loss_and_backward(h, y)
    assert head.path == "fused"
    assert sorted(k[1] for k in head._buffers if k[0] == "dw") == [0, 70, 140]
    assert got_loss == pytest.approx(loss, rel=TOL[dtype]["rtol"])
    np.testing.assert_allclose(got_dh, dh, **TOL[dtype])
    np.testing.assert_allclose(head.grads["weight"], dw, **TOL[dtype])
    np.testing.assert_allclose(head.grads["bias"], db, **TOL[dtype])
    y[150] = V                                  # a bad id in the last share: nothing accumulated
    before = {k: g.copy() for k, g in head.grads.items()}
    with pytest.raises(ValueError, match=rf"got {V} \(entry 150\)"):
        head.loss_and_backward(h, y)
    for name, g in head.grads.items():
        np.testing.assert_array_equal(g, before[name])


def test_fused_head_keeps_its_buffers_and_accumulates(rng):
    fused, plain = heads(5, 7, "float32", rng)
    h, y = rng.standard_normal((3, 4, 5)).astype(np.float32), rng.integers(0, 7, (3, 4))
    for layer in (fused, plain):
        layer.loss_and_backward(h, y)
    buffers = {k: id(v) for k, v in fused._buffers.items()}
    assert set(buffers) == {"targets", "target_shift", "dlogits", ("db", 0), ("dw", 0)}
    for layer in (fused, plain):
        layer.loss_and_backward(h, y.T.copy().T)        # non-contiguous targets
    assert {k: id(v) for k, v in fused._buffers.items()} == buffers      # reused
    for name in ("weight", "bias"):
        np.testing.assert_allclose(fused.grads[name], plain.grads[name], rtol=1e-5, atol=1e-7)
    fused.loss_and_backward(h[:2], y[:2])               # fewer rows: resized
    assert fused._buffers["targets"].shape == (8,)


def test_fused_head_drops_the_buffers_of_shares_it_no_longer_has(rng):
    """Per-share dW/db buffers are keyed by the share's first row: a new split (another
    thread count, another row count) must not leave the old split's behind."""
    from gpurnn.cpu.backend import CpuBackend
    head = OutputLayer(13, 11, "float32", seed=3, backend=CpuBackend(threads=3))
    h, y = rng.standard_normal((211, 13)).astype(np.float32), rng.integers(0, 11, 211)
    head.loss_and_backward(h, y)
    assert sorted(k for k in head._buffers if isinstance(k, tuple)) == [
        ("db", 0), ("db", 70), ("db", 140), ("dw", 0), ("dw", 70), ("dw", 140)]
    head.backend.threads = 2                            # 105 + 106 rows
    head.loss_and_backward(h, y)
    assert sorted(k for k in head._buffers if isinstance(k, tuple)) == [
        ("db", 0), ("db", 105), ("dw", 0), ("dw", 105)]


def test_fused_head_gradients_by_finite_differences(rng):
    fused, _ = heads(3, 4, "float64", rng)
    h, y = rng.standard_normal((5, 3)), rng.integers(0, 4, 5)
    _, dh = fused.loss_and_backward(h, y)
    grads = {k: g.copy() for k, g in fused.grads.items()}

    def loss():
        return fused.loss_and_backward(h, y)[0]         # the fused path's own loss

    for name, p in fused.parameters().items():
        np.testing.assert_allclose(numeric_grad(loss, p), grads[name], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(numeric_grad(loss, h), dh, rtol=1e-7, atol=1e-10)
    assert fused.path == "fused"


def test_fused_head_checks_targets_and_propagates_nan(rng):
    fused, _ = heads(3, 4, "float32", rng)
    h = rng.standard_normal((5, 3)).astype(np.float32)
    for bad in (4, -1):
        with pytest.raises(ValueError, match=r"targets: expected symbol ids in 0\.\.3"):
            fused.loss_and_backward(h, np.array([0, 1, bad, 2, 3]))
    with pytest.raises(ValueError, match="targets"):
        fused.loss_and_backward(h, np.zeros(4, int))
    with pytest.raises(ValueError, match="reduction"):
        fused.loss_and_backward(h, np.zeros(5, int), reduction="max")
    h[2, 1] = np.nan                                    # the divergence check needs a NaN loss
    assert np.isnan(fused.loss_and_backward(h, np.zeros(5, int))[0])


def test_head_records_why_it_took_the_plain_path(rng, monkeypatch):
    """A plain path on NumPy arrays is a fallback: recorded, warned once, strict raises."""
    from gpurnn import contract
    monkeypatch.setattr(contract, "_warned", set())
    monkeypatch.delenv("GPURNN_STRICT", raising=False)
    fused, _ = heads(3, 4, "float32", rng)
    with pytest.warns(RuntimeWarning, match="h is float64"):
        fused.loss_and_backward(rng.standard_normal((5, 3)), np.zeros(5, int))   # float64 h
    assert fused.path == "plain: h is float64, the layer float32"
    monkeypatch.setenv("GPURNN_STRICT", "1")
    with pytest.raises(contract.FallbackError, match="h is float64"):
        fused.loss_and_backward(rng.standard_normal((5, 3)), np.zeros(5, int))


def random_problem(rng, dtype):
    shapes = {"w": (7, 5), "b": (5,), "scalar": (), "odd": (3, 1, 13)}
    params = {k: np.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}
    grads_seq = [{k: np.asarray(3 * rng.standard_normal(s), dtype) for k, s in shapes.items()}
                 for _ in range(5)]
    return params, grads_seq


def make_pair(name, fused):
    if name == "adam":
        return Adam(0.01, betas=(0.8, 0.99), fused=fused)
    return SGD(0.1, momentum=0.9 if name == "sgd_momentum" else 0.0, fused=fused)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["adam", "sgd", "sgd_momentum"])
def test_fused_step_equals_the_plain_step_bit_for_bit(rng, dtype, name):
    params, grads_seq = random_problem(rng, dtype)
    runs = {}
    for fused in (True, False):
        opt, p = make_pair(name, fused), {k: v.copy() for k, v in params.items()}
        for step, grads in enumerate(grads_seq):
            opt.step(p, grads, grad_scale=(1.0, 0.37)[step % 2])
        assert set(opt.paths.values()) == {"fused" if fused else "plain: fused=False"}
        runs[fused] = (p, opt.state_dict())
    (p_f, (buf_f, meta_f)), (p_p, (buf_p, meta_p)) = runs[True], runs[False]
    assert meta_f == meta_p and set(buf_f) == set(buf_p)
    for k in params:
        np.testing.assert_array_equal(p_f[k], p_p[k], err_msg=k)
    for k in buf_f:
        np.testing.assert_array_equal(buf_f[k], buf_p[k], err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_and_adam_fused_match_the_in_place_clip_and_plain_adam(rng, dtype):
    """What Trainer.train_step runs now (global_norm, then the clip factor inside the fused
    update; grads untouched) vs what it ran before (clip_grad_norm in place, plain Adam)."""
    params, grads_seq = random_problem(rng, dtype)
    new, old = Adam(0.01, fused=True), Adam(0.01, fused=False)
    p_new, p_old = ({k: v.copy() for k, v in params.items()} for _ in range(2))
    for step, grads in enumerate(grads_seq):
        clip = (1.0, 1e3)[step % 2]                      # clips, then does not
        kept = {k: g.copy() for k, g in grads.items()}
        norm = global_norm(grads)
        new.step(p_new, grads, clip_scale(norm, clip))
        for k in grads:
            np.testing.assert_array_equal(grads[k], kept[k])
        assert clip_grad_norm(kept, clip) == pytest.approx(norm, rel=1e-12)
        old.step(p_old, kept)
    for k in params:
        np.testing.assert_allclose(p_new[k], p_old[k], **TOL[dtype])


def test_global_norm_fused_and_plain(rng):
    grads = {"a": rng.standard_normal((9, 7)).astype(np.float32), "b": rng.standard_normal(3),
             "t": rng.standard_normal((6, 4)).T, "s": np.asarray(2.0)}   # transposed, 0-d
    expected = np.sqrt(sum((np.asarray(g, np.float64) ** 2).sum() for g in grads.values()))
    assert global_norm(grads) == pytest.approx(expected, rel=1e-12)
    assert clip_scale(expected, 2 * expected) == 1.0
    assert clip_scale(4.0, 1.0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="max_norm"):
        clip_scale(1.0, 0.0)


def test_optimizer_records_why_a_parameter_took_the_plain_path(rng, monkeypatch):
    """Plain paths on NumPy arrays are fallbacks: recorded per parameter, warned once,
    FallbackError under GPURNN_STRICT=1; fused=False is the user's choice and warns not."""
    import warnings
    from gpurnn import contract
    monkeypatch.setattr(contract, "_warned", set())
    monkeypatch.delenv("GPURNN_STRICT", raising=False)
    opt = Adam(0.01)
    p = {"fine": np.zeros(4, np.float32), "strided": np.zeros((4, 6), np.float32)[:, ::2],
         "mixed": np.zeros(3, np.float32)}
    g = {"fine": np.ones(4, np.float32), "strided": np.ones((4, 3), np.float32),
         "mixed": np.ones(3, np.float64)}
    with pytest.warns(RuntimeWarning, match="not the fused pass") as caught:
        opt.step(p, g)
    assert sorted(str(w.message).split(":")[1].split()[0] for w in caught) == ["mixed", "strided"]
    monkeypatch.setenv("GPURNN_STRICT", "1")
    with pytest.raises(contract.FallbackError, match="strided"):
        Adam(0.01).step(p, g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Adam(0.01, fused=False).step(p, g)
    monkeypatch.delenv("GPURNN_STRICT")
    opt = Adam(0.01)
    p = {"fine": np.zeros(4, np.float32), "strided": np.zeros((4, 6), np.float32)[:, ::2],
         "mixed": np.zeros(3, np.float32)}
    opt.step(p, g)
    assert opt.paths["fine"] == "fused"
    assert "not C-contiguous" in opt.paths["strided"]
    assert "dtype or shape" in opt.paths["mixed"]
    np.testing.assert_allclose(p["strided"], p["fine"][0])        # all took the same step
    np.testing.assert_allclose(p["mixed"], p["fine"][0])


def test_plain_saved_state_resumes_fused(rng):
    """Optimizer state saved by the plain path (the format checkpoints hold) continues on
    the fused path exactly as the plain path continues it."""
    params, grads_seq = random_problem(rng, "float32")
    first = Adam(0.01, fused=False)
    for grads in grads_seq[:3]:
        first.step(params, grads)
    arrays, meta = first.state_dict()
    assert sorted(arrays) == sorted(f"{b}/{k}" for b in ("m", "v") for k in params)
    runs = []
    for fused in (True, False):
        opt, p = Adam(0.01, fused=fused), {k: v.copy() for k, v in params.items()}
        opt.load_state_dict(arrays, meta)
        for grads in grads_seq[3:]:
            opt.step(p, grads)
        runs.append(p)
    for k in params:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
