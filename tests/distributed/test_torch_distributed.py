"""The outer step over torch.distributed (gloo, 2 CPU processes) equals the one-process simulation."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lab.distributed import EDiT, LocalSGD, OuterSGD, distributed_sync

ANCHOR = torch.tensor([1.0, -1.0, 0.5])
LOCALS = torch.tensor([[0.8, -0.9, 0.5], [0.2, -1.5, 1.5]])  # rank r's model after its inner steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        outer = OuterSGD(lr=0.7, momentum=0.9, nesterov=True)
        anchor = ANCHOR.clone()
        for _ in range(2):  # two outer steps: exercises the momentum buffer
            anchor = distributed_sync(anchor, LOCALS[rank], outer)
        weighted = distributed_sync(ANCHOR.clone(), LOCALS[rank], OuterSGD(lr=1.0, momentum=0.0, nesterov=False),
                                    temperature=0.5, max_norm=0.8)
        out[rank] = torch.stack([anchor, weighted])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_outer_step_matches_simulation():
    # Execute: two processes run the all-reduce outer steps
    manager = mp.Manager()
    out = manager.dict()
    # fork: the children inherit the imported modules (spawn would re-import torch and lab in each)
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="fork")
    # Simulated reference in this process
    sim = LocalSGD(outer_lr=0.7, outer_momentum=0.9)
    anchor = ANCHOR.clone()
    for _ in range(2):
        anchor = sim.sync(anchor, LOCALS)
    weighted = EDiT(outer_lr=1.0, outer_momentum=0.0, temperature=0.5, clip=0.8,
                    skip_anomaly=False).sync(ANCHOR.clone(), LOCALS)
    # Assert: every rank holds the simulated anchors
    for rank in range(2):
        assert torch.allclose(out[rank][0], anchor, atol=1e-6)
        assert torch.allclose(out[rank][1], weighted, atol=1e-6)
