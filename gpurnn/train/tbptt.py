"""Truncated BPTT by windows: the min-char-rnn training loop, one window at a time.

Two ways to truncate, and when to use which:

* ``model.backward(dout, truncate=k)`` — one forward over the whole sequence, the
  recurrent gradient cut every k steps. Use it when the sequence fits in memory and
  you want one optimizer step per sequence.
* windows — forward and backward one window of k steps at a time, carrying the final
  state into the next window with its gradient stopped. Memory is O(k) instead of O(T),
  and an optimizer step can follow each window (min-char-rnn). Use it for long or
  streaming sequences.

This module is the one window loop in gpurnn (the char LM's Trainer and the forecaster's
LatentAR run it too). It is step-addressable, so that a run can stop after any window and
resume exactly:

* ``tbptt_window(model, inputs, loss_fn, state, start)`` — ONE window: forward from the
  carried state, the loss and its gradient, backward. Returns (loss, new state).
* ``window_at(step, k, n_windows, state)`` — which window an optimizer-step loop that
  cycles over a sequence runs at ``step``, and the state it starts from (zero at the
  start of every pass): a loop is then a function of its step number and carried state
  alone, which is what a checkpoint saves.
* ``tbptt_windows(model, x, k, loss_fn, state, after_window, first)`` — every window of a
  sequence from window ``first`` on (``first`` and the state saved after window
  ``first - 1`` continue an interrupted pass).

With the same weights (no update between windows) windows and ``truncate=k`` give the
same weight gradients.
"""
from ..contract import compute_scope
from ..validation import check_positive_int


def tbptt_window(model, inputs, loss_fn, state=None, start=0):
    """Forward and backward of one window; gradients accumulate in ``model.grads``.

    model    a gpurnn recurrent layer (gpurnn.RNN/LSTM/GRU/Recurrent)
    inputs   the window's input, (k, B, I) or (B, k, I) with model.batch_first; or
             integer token ids (k, B) / (B, k) (one-hot rows, gpurnn.layers)
    loss_fn  loss_fn(out, start) -> (loss, dout): the window's loss (anything; passed
             through) and its gradient w.r.t. ``out`` (same shape)
    state    the carried state as model(x, state) takes it, or None (zeros); its gradient
             is stopped here (no dh_n flows into the previous window)
    start    the window's first step in the whole sequence, passed to ``loss_fn``

    Runs inside the backend's compute_scope (gpurnn.contract: on "cpu" BLAS stays at one
    thread beside the layers), loss_fn included. The inputs are data: their gradient is
    not computed (need_dx=False skips the first layer's dX GEMM). Returns (loss, new state).
    """
    with compute_scope(model.backend_impl):
        out, state = model(inputs, state)
        loss, dout = loss_fn(out, start)
        # no dh_n: the carried state's gradient is stopped; no dx: nobody reads it
        model.backward(dout, need_dx=False)
    return loss, state


def window_at(step, k, n_windows, state):
    """(steps, state) for optimizer step ``step`` (0-based) of a loop that cycles over a
    sequence of ``n_windows`` windows of ``k`` steps: ``steps`` = slice of window
    step % n_windows, and ``state`` as given, or None where a new pass starts (window 0)."""
    w = step % n_windows
    return slice(w * k, (w + 1) * k), (None if w == 0 else state)


def tbptt_windows(model, x, k, loss_fn, state=None, after_window=None, first=0):
    """Run ``model`` over ``x`` in windows of ``k`` steps with truncated BPTT.

    model         a gpurnn RNN/LSTM/GRU/Recurrent (unidirectional: the reverse direction
                  would need the future of each window)
    x             (T, B, I), or (B, T, I) with model.batch_first, or integer token ids
                  (T, B) / (B, T); the last window may be shorter
    k             window length >= 1
    loss_fn       loss_fn(out_window, start) -> (loss, dout_window): the window's loss and
                  its gradient w.r.t. out_window (same shape); start = first step index
    state         initial state as model(x, state) takes it, or None
    after_window  optional after_window(start, loss): called after each window's backward,
                  e.g. to take an optimizer step and zero the gradients
    first         the window to start at (0 = the start of x); with the state returned
                  after window first - 1 the run continues exactly

    Returns (losses, state): the per-window losses and the final state (to carry on into
    the next call). Gradients accumulate in model.grads as model.backward does.
    """
    k = check_positive_int("k", k)
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        raise ValueError(f"first: expected a window index >= 0, got {first!r}")
    if model.bidirectional:
        raise ValueError("model: tbptt_windows needs a unidirectional model (bidirectional=False);"
                         " use model.backward(dout, truncate=k) for a bidirectional one")
    time_axis = 1 if model.batch_first else 0
    if getattr(x, "ndim", None) not in (2, 3):      # 2: token ids (the layer checks them)
        raise ValueError(f"x: expected 3 dimensions, or 2 of integer token ids, got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    T = x.shape[time_axis]
    losses = []
    for start in range(first * k, T, k):
        window = x[:, start:start + k] if time_axis == 1 else x[start:start + k]
        loss, state = tbptt_window(model, window, loss_fn, state, start)
        losses.append(loss)
        if after_window is not None:
            after_window(start, loss)
    return losses, state
