"""torch stays optional: gpurnn imports without it, and gpurnn.torch says how to install it."""
import os
import subprocess
import sys
import textwrap


def test_gpurnn_imports_without_torch_and_bridge_says_how_to_install_it():
    # sys.modules["torch"] = None makes every `import torch` fail, as if it were not installed
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        import gpurnn
        m = gpurnn.LSTM(2, 3, backend="numpy")
        assert "torch" not in [k for k, v in sys.modules.items() if v is not None]
        try:
            import gpurnn.torch
        except ImportError as exc:
            # gpurnn is not on a package index: the hint must work from a checkout
            assert "pip install torch" in str(exc) and 'pip install -e ".[torch]"' in str(exc), str(exc)
            assert "pip install gpurnn[torch]" not in str(exc), str(exc)
            print("ok")
        else:
            raise SystemExit("gpurnn.torch imported without torch")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))      # this checkout's gpurnn
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
