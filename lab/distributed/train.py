"""Train with Local SGD / EDiT / A-EDiT on real processes (``torch.distributed``), and compare.

Command line (launched through torchrun; gloo on CPU, NCCL on GPUs)::

    torchrun --standalone --nproc_per_node 4 -m lab.distributed.train \\
        --algorithm edit --workers 4 --rounds 20 --sync-every 8 --out edit.json

trains the digits MLP (``lab.models.mlp.MLP``, scikit-learn's digits split IID over the workers)
with :mod:`lab.distributed.wrappers` and rank 0 writes a :class:`~lab.history.History` (test
loss and accuracy of the anchor, pseudo-gradient norms, flagged workers, inner steps per round,
wall time). ``--workers`` must equal torchrun's world size. Without torchrun the same command
starts the workers itself as local processes (:func:`spawn`, localhost only, bounded time).
``--corrupt-rank r`` gives worker r a bad shard from round ``--corrupt-from`` on (labels
shuffled and inputs scaled x20: its pseudo-gradient jumps, EDiT's detector eliminates it);
``--slow-rank r --slow-factor f`` makes worker r sleep so each of its steps takes f times longer
(A-EDiT's time-based sync lets the others keep stepping).

:func:`lab.experiments.distributed.least_squares_worker` runs the ``distributed_training``
experiment's problem on one rank with these wrappers, drawing the same minibatches as the
one-process simulation, so that real processes and the simulation can be compared number for number.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any, Callable

import torch

from lab.history import History


# ---- processes ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, backend: str, args: tuple, out) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(seconds=120))
    try:
        result = fn(rank, world, *args)
        if out is not None:
            out[rank] = result
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world: int, *args: Any, timeout: float = 300.0, backend: str = "gloo") -> dict[int, Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` local processes joined by ``backend`` on
    localhost; returns {rank: result}. Raises if a process fails or the run exceeds ``timeout`` s."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    out = manager.dict()
    ctx = mp.start_processes(_entry, args=(fn, world, free_port(), backend, args, out), nprocs=world, join=False,
                             start_method="fork")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed run of {world} processes exceeded {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return dict(out)


# ---- the digits MLP on real processes (the CLI) ---------------------------------------------
def digits_worker(rank: int, world: int, opts: dict) -> dict | None:
    """Train the digits MLP on this rank's shard; rank 0 returns the History as a dict."""
    import numpy as np
    import torch.distributed as dist

    from lab.distributed.wrappers import AEDiT, EDiT, LocalSGD
    from lab.models.mlp import MLP
    from lab.registry import parse_spec
    from toy_envs.datasets import digits

    torch.manual_seed(opts["seed"])  # the same initial model on every rank
    x_train, y_train, x_test, y_test = digits(seed=opts["seed"])
    shard = np.array_split(np.arange(len(y_train)), world)[rank]
    X, y = x_train[shard], y_train[shard].clone()
    model = MLP(64, tuple(opts["hidden"]), 10)
    inner = (torch.optim.AdamW(model.parameters(), lr=opts["inner_lr"]) if opts["inner"] == "adamw"
             else torch.optim.SGD(model.parameters(), lr=opts["inner_lr"]))
    name, kwargs = parse_spec(opts["algorithm"])
    outer_args = dict(outer_lr=opts["outer_lr"], outer_momentum=opts["outer_momentum"],
                      nesterov=opts["outer_momentum"] > 0)
    if name == "local_sgd":
        outer = LocalSGD(model, inner, sync_every=opts["sync_every"], **{**outer_args, **kwargs})
    elif name == "edit":
        outer = EDiT(model, inner, sync_every=opts["sync_every"], ewma_warmup=opts["ewma_warmup"],
                     **{**outer_args, **kwargs})
    elif name == "a_edit":
        outer = AEDiT(model, inner, sync_time=opts["sync_time"], ewma_warmup=opts["ewma_warmup"],
                      **{**outer_args, **kwargs})
    else:
        raise ValueError(f"algorithm must be local_sgd, edit or a_edit, got {name!r}")
    g = torch.Generator().manual_seed(opts["seed"] * 1000 + rank)
    loss_fn = torch.nn.CrossEntropyLoss()
    slow = opts["slow_factor"] if rank == opts["slow_rank"] else 1.0
    history = History(meta={"algorithm": opts["algorithm"], "workers": world, "engine": "torch.distributed",
                            "backend": dist.get_backend(), "options": opts})

    def evaluate(r: int, **extra):
        with torch.no_grad():
            logits = model(x_test)
            history.append(r, test_loss=float(loss_fn(logits, y_test)),
                           accuracy=float((logits.argmax(1) == y_test).float().mean()), **extra)

    evaluate(0, wall_clock=0.0)
    start = time.perf_counter()
    for r in range(1, opts["rounds"] + 1):
        corrupt = rank == opts["corrupt_rank"] and r >= opts["corrupt_from"]
        taken = 0
        while True:
            t0 = time.perf_counter()
            idx = torch.randint(0, len(y), (opts["batch_size"],), generator=g)
            xb, yb = X[idx], y[idx]
            if corrupt:  # a bad shard: shuffled labels, inputs x20
                xb, yb = 20 * xb, yb[torch.randperm(len(yb), generator=g)]
            inner.zero_grad()
            loss_fn(model(xb), yb).backward()
            inner.step()
            taken += 1
            if slow > 1:
                time.sleep((slow - 1) * max(time.perf_counter() - t0, opts["step_seconds"]))
            if outer.step():
                break
        steps = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(steps, torch.tensor([float(taken)]))
        if rank == 0:
            evaluate(r, wall_clock=time.perf_counter() - start, steps=[float(s) for s in steps],
                     **{k: v for k, v in outer.last_stats.items() if k != "steps"})
    return history.to_dict() if rank == 0 else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.distributed.train",
                                description="Local SGD / EDiT / A-EDiT on real processes: the digits MLP.")
    p.add_argument("--algorithm", default="edit", help="local_sgd, edit or a_edit (a registry spec)")
    p.add_argument("--workers", type=int, default=4, help="processes (must equal torchrun's world size)")
    p.add_argument("--rounds", type=int, default=20, help="communication rounds")
    p.add_argument("--sync-every", type=int, default=8, help="H inner steps per round (local_sgd, edit)")
    p.add_argument("--sync-time", type=float, default=0.05, help="seconds per round (a_edit)")
    p.add_argument("--inner", choices=("adamw", "sgd"), default="adamw", help="inner optimizer")
    p.add_argument("--inner-lr", type=float, default=3e-3, help="inner learning rate")
    p.add_argument("--outer-lr", type=float, default=0.7, help="outer learning rate")
    p.add_argument("--outer-momentum", type=float, default=0.9, help="outer (Nesterov) momentum; 0 = none")
    p.add_argument("--ewma-warmup", type=int, default=3, help="syncs before EDiT's detector may flag")
    p.add_argument("--hidden", type=int, nargs="*", default=[32], help="hidden layer sizes of the MLP")
    p.add_argument("--batch-size", type=int, default=32, help="minibatch per inner step")
    p.add_argument("--corrupt-rank", type=int, default=-1, help="worker with a bad shard (-1 = none)")
    p.add_argument("--corrupt-from", type=int, default=5, help="round the bad shard starts")
    p.add_argument("--slow-rank", type=int, default=-1, help="slow worker (-1 = none)")
    p.add_argument("--slow-factor", type=float, default=4.0, help="how many times longer its steps take")
    p.add_argument("--step-seconds", type=float, default=0.002, help="nominal step time the slow worker scales")
    p.add_argument("--seed", type=int, default=0, help="data split, initial model and minibatches")
    p.add_argument("--backend", default=None, help="gloo or nccl (default: nccl with CUDA, else gloo)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a self-started run is stopped")
    p.add_argument("--out", default="distributed_history.json", help="where rank 0 writes the History")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = {k: v for k, v in vars(args).items() if k not in ("out", "backend", "timeout")}
    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if "RANK" in os.environ:  # launched by torchrun
        import torch.distributed as dist

        world = int(os.environ["WORLD_SIZE"])
        if world != args.workers:
            print(f"error: --workers {args.workers} but torchrun started {world} processes", file=sys.stderr)
            return 2
        dist.init_process_group(backend)
        try:
            result = digits_worker(dist.get_rank(), world, opts)
        finally:
            dist.destroy_process_group()
    else:
        result = spawn(digits_worker, args.workers, opts, timeout=args.timeout, backend=backend).get(0)
    if result is not None:
        History.from_dict(result).to_json(args.out)
        last = result["rows"][-1] if "rows" in result else None
        print(f"wrote {args.out}" + (f" (last row {json.dumps(last)})" if last else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
