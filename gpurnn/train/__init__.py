"""Training utilities on top of the core (layers and the backend contract), for any model:

    losses.py      output layer (O = H W + b) and fused softmax cross-entropy
    optim.py       SGD / Adam over named arrays, clip_grad_norm, prefixed/unprefixed names
    fused.py       the compiled (njit) passes of a training step on NumPy arrays: the output
                   layer's loss/gradient, the global norm, clip + Adam/SGD
    checkpoint.py  .npz checkpoints (no pickle), checked before anything is allocated
    data.py        text, vocabulary, streams, one-hot
    tbptt.py       the truncated-BPTT window loop (tbptt_window, window_at, tbptt_windows)

Nothing here imports a backend's internals or an application (gpurnn.apps).
"""
