"""Applications built from the core and gpurnn.train:

    charlm.py       character-level language model: CharLM, Trainer (exact resume), sample
    forecast.py     AR(tau) vs window MLP vs latent AR on synthetic series
    diagnostics.py  gradient flow through time (vanishing / exploding), measured
    cli.py          the ``gpurnn`` command (train, sample, forecast, gradflow, info)
    plotting.py     headless matplotlib and the one figure-saving tail

Nothing in the library (core, backends, gpurnn.train) imports these.
"""
