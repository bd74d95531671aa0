"""matplotlib, headless: every plot in gpurnn is written to a file, never shown."""


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (works with no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
