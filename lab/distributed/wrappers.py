"""Local SGD, EDiT and A-EDiT over ``torch.distributed``, for any ``nn.Module`` and inner optimizer.

    import torch.distributed as dist
    from lab.distributed.wrappers import EDiT

    dist.init_process_group("gloo")                 # under torchrun; "nccl" on GPUs
    model = MyModel()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    outer = EDiT(model, inner, sync_every=8, outer_lr=0.7, outer_momentum=0.9)
    for batch in my_shard:                          # each process: its own data
        loss = model(batch).mean(); loss.backward()
        inner.step(); inner.zero_grad()
        outer.step()                                # counts the step; every H steps: sync

Each process is one worker k. ``step()`` counts inner steps; at a synchronization the worker's
pseudo-gradient ``Delta_k = theta_anchor - theta_k`` is reduced across processes and the outer
optimizer moves the anchor, which every worker then loads (its inner optimizer state is kept, as
in the simulation). The math is the simulation's, shared, not copied: each wrapper holds the
registry object of its algorithm (``lab.distributed.local_sgd.LocalSGD``, ``.edit.EDiT``,
``.a_edit.AEDiT``), and a synchronization runs its pieces across processes:

1. per-layer norms ``n_lk = ||Delta_k^l||`` (one layer per parameter tensor: layer-wise
   reduction) and the step count s_k are all-gathered (K x (L + 1) scalars);
2. every process runs the same ``layer_weights`` on them: EDiT's EWMA anomaly detector per layer
   (a flagged worker is eliminated: its Delta is zeroed and its norm raised by 1e6), the norm
   weights softmax(-n/T), A-EDiT's mix with the step shares s_k / sum s; Local SGD: 1/K;
3. one all-reduce sums ``w_lk Delta_k^l`` over workers (p numbers: the same traffic as model
   averaging); ``finish_layer`` clips each layer's result (pseudo-gradient clipping);
4. the outer step (Nesterov SGD; skipped if every worker was eliminated) gives the new anchor.

Since every process computes identical weights from identical gathered numbers, all processes
hold the same anchor after a sync (to all-reduce rounding), and the run equals the one-process
simulation :func:`lab.distributed.simulate.train` on the same seeds (tested with 2 and 4 gloo
processes).

Time-based synchronization (A-EDiT): :class:`AEDiT` syncs when the worker's next step would end
past ``sync_time`` seconds since the last sync (judged from the duration of its last step), so a
fast worker takes s_k = floor(sync_time / t_k) steps and a slow one fewer, and nobody waits for a
fixed step count. Every worker takes at least one step per round. ``clock`` is
``time.monotonic`` by default; a test passes a simulated clock.

``outer_lr=1, outer_momentum=0`` Local SGD is plain periodic model averaging, the same as
``torch.distributed.algorithms.model_averaging.averagers.PeriodicModelAverager`` (tested
parameter for parameter).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from lab.checks import check_int, check_positive
from lab.distributed.a_edit import AEDiT as AEDiTRule
from lab.distributed.edit import EDiT as EDiTRule
from lab.distributed.local_sgd import LocalSGD as LocalSGDRule


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


class _Outer:
    """Shared shell: the model, its inner optimizer, the anchor, the cross-process sync."""

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer, rule: LocalSGDRule, *,
                 sync_every: int | None, group=None):
        import torch.distributed as dist

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(inner_optimizer, torch.optim.Optimizer):
            raise TypeError(f"inner_optimizer must be a torch.optim.Optimizer, got {type(inner_optimizer).__name__}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call dist.init_process_group first "
                               "(or launch with torchrun)")
        self.model, self.inner, self.rule, self.group = model, inner_optimizer, rule, group
        self.sync_every = None if sync_every is None else check_int("sync_every", sync_every, minimum=1)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.sizes = [p.numel() for p in self.params]
        if isinstance(rule, EDiTRule) and rule.layer_sizes is None:
            rule.layer_sizes = tuple(self.sizes)  # layer-wise: one layer per parameter tensor
        self.layers = rule.layer_sizes_for(sum(self.sizes))
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.anchor = _flat(self.params).clone()  # theta_anchor, the same on every worker at the start
        self.steps_since_sync = 0
        self.syncs = 0
        self.last_stats: dict[str, float] = {}

    def step(self) -> bool:
        """Count one inner step; synchronize when due. Returns True when a sync happened."""
        self.steps_since_sync += 1
        if self._due():
            self.sync()
            return True
        return False

    def _due(self) -> bool:
        return self.steps_since_sync >= self.sync_every

    @torch.no_grad()
    def sync(self) -> torch.Tensor:
        """One communication round (collective: every worker must call it); returns the new anchor."""
        import torch.distributed as dist

        local = _flat(self.params).to(self.anchor.dtype)
        delta = self.anchor - local  # Delta_k = theta_anchor - theta_k  (p,)
        blocks = delta.split(list(self.layers))
        mine = torch.stack([b.norm() for b in blocks] + [torch.tensor(float(self.steps_since_sync), dtype=delta.dtype)])
        gathered = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine, group=self.group)  # (K, L + 1): norms and step counts
        table = torch.stack(gathered)
        norms, steps = table[:, :-1].T.contiguous(), table[:, -1].round().long()  # (L, K), (K,)
        weights, flagged = self.rule.layer_weights(norms, steps)  # identical on every worker
        contribution = torch.cat([torch.zeros_like(b) if bool(flagged[l, self.rank]) else weights[l, self.rank] * b
                                  for l, b in enumerate(blocks)])
        dist.all_reduce(contribution, op=dist.ReduceOp.SUM, group=self.group)  # sum_k w_lk Delta_k^l
        reduced = torch.cat([self.rule.finish_layer(piece) for piece in contribution.split(list(self.layers))])
        self.anchor = self.rule.outer_step(self.anchor, reduced)
        for p, piece in zip(self.params, self.anchor.split(self.sizes)):  # copy: params never alias the anchor
            p.copy_(piece.view_as(p))
        self.last_stats = {**self.rule.last_stats, "steps": float(self.steps_since_sync)}
        self.steps_since_sync = 0
        self.syncs += 1
        return self.anchor

    def state_dict(self) -> dict:
        return {"anchor": self.anchor.clone(), "syncs": self.syncs, "steps_since_sync": self.steps_since_sync,
                "rule": self.rule.state_dict(), "inner": self.inner.state_dict()}


class LocalSGD(_Outer):
    """Local SGD / DiLoCo across processes: average the pseudo-gradients every ``sync_every`` inner
    steps and take an outer (Nesterov) SGD step; ``outer_lr=1, outer_momentum=0`` = model averaging."""

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer, *, sync_every: int = 8,
                 outer_lr: float = 0.7, outer_momentum: float = 0.9, nesterov: bool = True, group=None):
        rule = LocalSGDRule(outer_lr=outer_lr, outer_momentum=outer_momentum, nesterov=nesterov)
        super().__init__(model, inner_optimizer, rule, sync_every=sync_every, group=group)


class EDiT(_Outer):
    """EDiT across processes: layer-wise reduction with anomaly elimination, norm weights and clipping.

    Args beyond Local SGD's: ``temperature`` (T; None = plain average), ``clip`` (c per layer),
    ``skip_anomaly``, ``ewma_alpha``, ``ewma_warmup``, ``ewma_threshold`` (the detector),
    ``layer_sizes`` (default: one layer per parameter tensor).
    """

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer, *, sync_every: int = 8,
                 outer_lr: float = 0.7, outer_momentum: float = 0.9, nesterov: bool = True,
                 temperature: float | None = 1.0, clip: float | None = None, skip_anomaly: bool = True,
                 ewma_alpha: float = 0.02, ewma_warmup: int = 120, ewma_threshold: float = 3.0,
                 layer_sizes: tuple[int, ...] | None = None, group=None):
        rule = EDiTRule(outer_lr=outer_lr, outer_momentum=outer_momentum, nesterov=nesterov, temperature=temperature,
                        clip=clip, skip_anomaly=skip_anomaly, ewma_alpha=ewma_alpha, ewma_warmup=ewma_warmup,
                        ewma_threshold=ewma_threshold, layer_sizes=layer_sizes)
        super().__init__(model, inner_optimizer, rule, sync_every=sync_every, group=group)


class AEDiT(_Outer):
    """A-EDiT across processes: EDiT synchronized every ``sync_time`` seconds, not every H steps.

    Args: ``sync_time`` (seconds between syncs), ``step_weight_ratio`` (rho), ``clock`` (seconds;
    default ``time.monotonic``), and EDiT's.
    """

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer, *, sync_time: float = 1.0,
                 step_weight_ratio: float = 0.5, outer_lr: float = 0.7, outer_momentum: float = 0.9,
                 nesterov: bool = True, temperature: float | None = 1.0, clip: float | None = None,
                 skip_anomaly: bool = True, ewma_alpha: float = 0.02, ewma_warmup: int = 120,
                 ewma_threshold: float = 3.0, layer_sizes: tuple[int, ...] | None = None,
                 clock: Callable[[], float] = time.monotonic, group=None):
        rule = AEDiTRule(sync_time=sync_time, step_weight_ratio=step_weight_ratio, outer_lr=outer_lr,
                         outer_momentum=outer_momentum, nesterov=nesterov, temperature=temperature, clip=clip,
                         skip_anomaly=skip_anomaly, ewma_alpha=ewma_alpha, ewma_warmup=ewma_warmup,
                         ewma_threshold=ewma_threshold, layer_sizes=layer_sizes)
        super().__init__(model, inner_optimizer, rule, sync_every=None, group=group)
        self.sync_time = check_positive("sync_time", sync_time)
        self.clock = clock
        self.window_start = clock()
        self.last_tick = self.window_start

    def _due(self) -> bool:
        now = self.clock()
        last_step = now - self.last_tick
        self.last_tick = now
        # sync when the next step (as long as the last one) would end past the window
        return (now - self.window_start) + last_step > self.sync_time

    def sync(self) -> torch.Tensor:
        anchor = super().sync()
        self.window_start = self.last_tick = self.clock()
        return anchor


__all__ = ["LocalSGD", "EDiT", "AEDiT"]
