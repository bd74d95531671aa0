"""matplotlib, headless: every plot in gpurnn is written to a file, never shown."""


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (works with no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, outside_legends=False):
    """Lay out, write ``fig`` to ``path`` (110 dpi) and free it; ``outside_legends``: grow
    the image to keep legends placed outside the axes."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight" if outside_legends else None)
    pyplot().close(fig)
