"""Character-level language model on gpurnn.torch.LSTM, trained with DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/ddp_train.py              # 2 processes, gloo on CPU
    torchrun --nproc_per_node=8 examples/ddp_train.py --device cuda # NCCL, one GPU per process
    python examples/ddp_train.py                                    # one process, no DDP

Every step draws a *global* batch of ``--batch * world_size`` windows from a fixed corpus
(deterministically from --seed and the step), and rank r trains on rows
[r*batch, (r+1)*batch). DDP averages the gradients, so N processes follow the same
trajectory as one process with ``--batch N*batch`` (up to rounding) — which is what
tests/test_torch_ddp.py checks.

Rank 0 prints the loss every --log-every steps and at the end the throughput in samples
(windows) per second over all ranks, excluding --warmup steps, plus one ``RESULT {...}``
JSON line for scripts (benchmarks/bench_torch_bridge.py). --dump DIR writes each rank's
losses, first-step (averaged) gradients and final weights to DIR/rank{r}.pt.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
import gpurnn.torch as gt  # noqa: E402

CORPUS = (
    "A recurrent network reads a sequence one step at a time and carries a hidden state "
    "from each step to the next. Backpropagation through time unrolls that loop and "
    "multiplies the Jacobians of every step, which is why gradients vanish or explode; "
    "the LSTM and the GRU add gates that let the state pass through many steps unchanged. "
    "Truncated BPTT cuts the product after k steps and carries the state forward. "
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the throughput")
    p.add_argument("--batch", type=int, default=16, help="windows per process per step")
    p.add_argument("--seq", type=int, default=32, help="window length (time steps)")
    p.add_argument("--embed", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="gpurnn backend: auto, numpy, cpu, cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: keep)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--dump", default=None, help="directory for per-rank results (tests)")
    return p.parse_args(argv)


def vocabulary():
    chars = sorted(set(CORPUS))
    return {c: i for i, c in enumerate(chars)}


def encoded_corpus():
    stoi = vocabulary()
    return torch.tensor([stoi[c] for c in CORPUS], dtype=torch.long)


def global_batch(data, step, n_rows, seq, seed):
    """(n_rows, seq + 1) windows for this step, the same on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, data.numel() - seq - 1, (n_rows,), generator=g)
    return torch.stack([data[s:s + seq + 1] for s in starts.tolist()])


class CharLM(torch.nn.Module):
    def __init__(self, vocab, embed, hidden, layers, dropout, backend):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.lstm = gt.LSTM(embed, hidden, num_layers=layers, dropout=dropout, batch_first=True,
                            backend=backend)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens):
        h, _ = self.lstm(self.embed(tokens))
        return self.head(h)


def build_model(args, device):
    torch.manual_seed(args.seed)          # same initial weights on every rank
    model = CharLM(len(vocabulary()), args.embed, args.hidden, args.layers, args.dropout,
                   args.backend)
    return model.to(device=device, dtype=getattr(torch, args.dtype))


def loss_on(model, rows):
    logits = model(rows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


def train(args, rank=0, world=1, device=torch.device("cpu"), log=print):
    """Train; returns losses, first-step gradients, final weights and samples/s."""
    model = build_model(args, device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    data = encoded_corpus()
    losses, first_grads, t0 = [], None, None
    for step in range(args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        rows = global_batch(data, step, args.batch * world, args.seq, args.seed)
        rows = rows[rank * args.batch:(rank + 1) * args.batch].to(device)
        loss = loss_on(net, rows)
        opt.zero_grad()
        loss.backward()                    # DDP all-reduces (averages) gradients here
        if first_grads is None:
            first_grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}
        opt.step()
        losses.append(loss.item())
        if rank == 0 and (step + 1) % args.log_every == 0:
            log(f"step {step + 1:4d}  loss {loss.item():.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timed = args.steps - args.warmup
    samples_per_s = (timed * args.batch * world / (time.perf_counter() - t0)
                     if t0 is not None and timed > 0 else float("nan"))
    final = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    return dict(losses=losses, first_grads=first_grads, final=final, samples_per_s=samples_per_s)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        res = train(args, rank, world, device)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            torch.save(res, os.path.join(args.dump, f"rank{rank}.pt"))
        if rank == 0:
            print(f"world_size {world}  device {device.type}  backend {args.backend}  dtype {args.dtype}"
                  f"  global batch {args.batch * world}x{args.seq}  hidden {args.hidden}  (gpurnn.torch.LSTM)")
            print(f"final loss {res['losses'][-1]:.4f}  (first {res['losses'][0]:.4f})")
            print(f"throughput {res['samples_per_s']:.1f} samples/s "
                  f"({res['samples_per_s'] * args.seq:.0f} tokens/s) over {args.steps - args.warmup} steps")
            print("RESULT " + json.dumps(dict(world_size=world, samples_per_s=res["samples_per_s"],
                                              loss=res["losses"][-1], first_loss=res["losses"][0],
                                              steps=args.steps, batch_per_rank=args.batch,
                                              seq=args.seq, hidden=args.hidden, device=device.type,
                                              backend=args.backend, dtype=args.dtype)))
    finally:
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
