"""Two processes with DistributedDataParallel (gloo, localhost) on gpurnn.torch.LSTM.

Runs examples/ddp_train.py under torchrun (--standalone: a free port chosen by the
rendezvous) and checks that DDP averaged the gradients — they equal one process's
gradients on the concatenated batch and differ from each rank's own — and that both
ranks end with identical weights, which also match the single-process trajectory.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the 2 DDP tests in this"
                            " module are skipped (pip install torch)")
dist = pytest.importorskip("torch.distributed", reason="torch built without torch.distributed: the 2"
                           " DDP tests in this module are skipped")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available: the 2 DDP tests in this"
                " module are skipped", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ddp_train.py"
ARGS = ["--steps", "3", "--warmup", "0", "--batch", "3", "--seq", "6", "--embed", "4",
        "--hidden", "5", "--layers", "2", "--backend", "numpy", "--dtype", "float64",
        "--device", "cpu", "--lr", "0.5", "--log-every", "1"]


def load_example():
    spec = importlib.util.spec_from_file_location("gpurnn_ddp_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(EXAMPLE), *ARGS, "--dump", str(out)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"2-process DDP run did not finish in 300 s: {exc.stdout}\n{exc.stderr}")
    assert res.returncode == 0, f"torchrun failed:\n{res.stdout}\n{res.stderr[-4000:]}"
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ranks, res.stdout


def test_both_ranks_end_with_identical_weights(ddp_results):
    (r0, r1), stdout = ddp_results
    assert r0["final"].keys() == r1["final"].keys() and len(r0["final"]) > 0
    assert any(k.startswith("lstm.") for k in r0["final"])
    for name in r0["final"]:
        assert torch.equal(r0["final"][name], r1["final"][name]), name
    assert "throughput" in stdout and "samples/s" in stdout


def test_gradients_were_averaged(ddp_results):
    (r0, r1), _ = ddp_results
    ex = load_example()
    args = ex.parse_args(ARGS)
    # one process, the concatenated batch of both ranks
    full = ex.train(ex.parse_args(ARGS + ["--batch", str(2 * args.batch)]), log=lambda *_: None)
    # one process per shard, no communication: each rank's own gradients
    model = ex.build_model(args, torch.device("cpu"))
    rows = ex.global_batch(ex.encoded_corpus(), 0, 2 * args.batch, args.seq, args.seed)
    shard_grads = []
    for r in range(2):
        model.zero_grad()
        ex.loss_on(model, rows[r * args.batch:(r + 1) * args.batch]).backward()
        shard_grads.append({n: p.grad.clone() for n, p in model.named_parameters()})

    differs_from_local = False
    for name, g_full in full["first_grads"].items():
        for rank in (r0, r1):
            torch.testing.assert_close(rank["first_grads"][name], g_full, rtol=1e-10, atol=1e-12,
                                       msg=f"first-step gradient of {name}")
        mean = (shard_grads[0][name] + shard_grads[1][name]) / 2
        torch.testing.assert_close(r0["first_grads"][name], mean, rtol=1e-10, atol=1e-12)
        differs_from_local |= not torch.allclose(r0["first_grads"][name], shard_grads[0][name])
    assert differs_from_local, "rank 0's gradients equal its own shard's: nothing was averaged"
    # and the whole trajectory matches the single-process run
    for name, w in full["final"].items():
        torch.testing.assert_close(r0["final"][name], w, rtol=1e-9, atol=1e-11, msg=name)
    assert r0["losses"] != r1["losses"]      # each rank saw its own shard
