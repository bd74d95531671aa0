"""``python -m gpurnn ...`` runs the ``gpurnn`` command (gpurnn.apps.cli)."""
import sys

from .apps.cli import main

sys.exit(main())
