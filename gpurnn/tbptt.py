"""Truncated BPTT by windows: the min-char-rnn training loop as one library call.

Two ways to truncate, and when to use which:

* ``model.backward(dout, truncate=k)`` — one forward over the whole sequence, the
  recurrent gradient cut every k steps. Use it when the sequence fits in memory and
  you want one optimizer step per sequence.
* ``tbptt_windows(model, x, k, loss_fn)`` — forward and backward one window of k steps
  at a time, carrying the final state into the next window with its gradient stopped.
  Memory is O(k) instead of O(T), and ``after_window`` can take an optimizer step per
  window (min-char-rnn). Use it for long or streaming sequences.

With the same weights (no update between windows) both give the same weight gradients.
"""
from .validation import check_positive_int


def tbptt_windows(model, x, k, loss_fn, state=None, after_window=None):
    """Run ``model`` over ``x`` in windows of ``k`` steps with truncated BPTT.

    model         a gpurnn RNN/LSTM/GRU (unidirectional: the reverse direction would need
                  the future of each window)
    x             (T, B, I), or (B, T, I) with model.batch_first; the last window may be shorter
    k             window length >= 1
    loss_fn       loss_fn(out_window, start) -> (loss, dout_window): the window's loss and
                  its gradient w.r.t. out_window (same shape); start = first step index
    state         initial state as model(x, state) takes it, or None
    after_window  optional after_window(start, loss): called after each window's backward,
                  e.g. to take an optimizer step and zero the gradients

    Returns (losses, state): the per-window losses and the final state (to carry on into
    the next call). Gradients accumulate in model.grads as model.backward does.
    """
    k = check_positive_int("k", k)
    if model.bidirectional:
        raise ValueError("model: tbptt_windows needs a unidirectional model (bidirectional=False);"
                         " use model.backward(dout, truncate=k) for a bidirectional one")
    time_axis = 1 if model.batch_first else 0
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"x: expected 3 dimensions, got shape {getattr(x, 'shape', type(x).__name__)}")
    T = x.shape[time_axis]
    losses = []
    for start in range(0, T, k):
        window = x[:, start:start + k] if time_axis == 1 else x[start:start + k]
        out, state = model(window, state)
        loss, dout = loss_fn(out, start)
        model.backward(dout)          # no dh_n: the carried state's gradient is stopped
        losses.append(loss)
        if after_window is not None:
            after_window(start, loss)
    return losses, state
