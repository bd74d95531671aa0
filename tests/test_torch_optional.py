"""torch stays optional: gpurnn imports without it, and gpurnn.torch says how to install it."""
import subprocess
import sys
import textwrap


def test_gpurnn_imports_without_torch_and_bridge_names_the_extra():
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
            assert "pip install gpurnn[torch]" in str(exc), str(exc)
            print("ok")
        else:
            raise SystemExit("gpurnn.torch imported without torch")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
