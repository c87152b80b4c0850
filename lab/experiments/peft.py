"""Experiments ``peft_finetune`` and ``checkpoint_merging``: adapt a pretrained MLP to a shifted
task with each PEFT method, then merge checkpoints (MWA) and ensemble independent models.

The toy. A "pretrained" network f_A is a random MLP (8 → 32 → 32 → 4, tanh): it is the teacher of
task A, so it solves A exactly. Task B shifts f_A's *middle* layer by a rank-``shift_rank`` matrix
(norm ``shift_scale``): targets y = f_B(x) + noise. Fine-tuning f_A on B is a low-rank job in one
layer, so a rank-r adapter can solve it, and AdaLoRA should move its rank budget to that layer.

``peft_finetune`` trains the adapters of one method (Adam, full-batch) and records, per step, the
training ``loss`` and the held-out ``test_loss``; ``artifacts``: ``trainable`` (parameter count),
``base_test_loss`` (the frozen model), ``merge_max_diff`` (max |merged − unmerged output|) and a
sample of ``unmerged``/``merged`` outputs, AdaLoRA's ``rank_history`` (live rank per layer per
step) and IST's ``ist_counts``/``ist_importance``. :func:`peft_sweep` runs every method on the
same config (``Runs``, for loss vs trainable parameters).

``checkpoint_merging`` runs noisy LoRA fine-tuning (small minibatches, large lr), saves the
adapters every ``checkpoint_every`` steps in the second half, and compares the held-out loss of
the last checkpoint, their uniform average and their MWA average (``penalty``, ``metric``); then
trains ``n_models`` small MLPs from scratch on few noisy examples and compares their ensemble with
a single member ("Pre-training under infinite compute").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from lab import progress
from lab.claims import Claim
from lab.checks import check_int, check_positive
from lab.experiments._base import experiment, resolve_device
from lab.history import History, Runs
from lab.merge import Ensemble, mwa, mwa_weights
from lab.models.mlp import MLP
from lab.peft import (IST, GLAD, RankAllocator, adapters, apply, fila_initialize, merge,
                      orthogonal_regularizer, trainable_count, unmerge)

Method = Literal["frozen", "full", "lora", "adalora", "hut", "ist", "glad", "loku"]
METHODS: tuple[str, ...] = ("frozen", "full", "lora", "adalora", "hut", "ist", "glad", "loku")


@dataclass(frozen=True)
class PeftConfig:
    """Config of ``peft_finetune``."""

    method: Method = "lora"  # frozen / full fine-tuning / a registered PEFT method
    rank: int = 4  # adapter rank r (AdaLoRA: initial rank r0)
    target_r: int = 2  # AdaLoRA: average final rank per layer
    lr: float = 0.01  # Adam learning rate
    steps: int = 100  # optimizer steps (full batch)
    shift_layer: int = 1  # which of the 3 linear layers the task shift changes (0, 1, 2)
    shift_rank: int = 2  # rank of the task shift
    shift_scale: float = 3.0  # Frobenius norm of the task shift
    n_train: int = 256  # training examples of the shifted task
    noise: float = 0.01  # label noise std
    ist_k: int = 1  # IST: layers updated per step (of 3)
    glad_lam: float = 0.5  # GLAD: steering strength lambda (0 = LoRA, 1 = SAM)
    seed: int = 0  # seeds the teacher, the data and the adapters
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def make_task(shift_rank: int, shift_scale: float, n_train: int, noise: float, seed: int,
              n_test: int = 512, shift_layer: int = 1) -> tuple[nn.Module, nn.Module, tuple, tuple]:
    """(pretrained f_A, shifted teacher f_B, (x_train, y_train), (x_test, y_test)), built on the CPU
    (the same task on every device; move it with :func:`_to`)."""
    check_int("shift_rank", shift_rank, minimum=1)
    check_positive("shift_scale", shift_scale, allow_zero=True)
    check_int("n_train", n_train, minimum=1)
    with torch.device("cpu"):
        return _make_task(shift_rank, shift_scale, n_train, noise, seed, n_test, shift_layer)


def _to(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in tensors)


def _make_task(shift_rank, shift_scale, n_train, noise, seed, n_test, shift_layer):
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)                      # nn.Linear init uses the global generator
    try:
        base = MLP(8, (32, 32), 4, activation="tanh")
    finally:
        torch.random.set_rng_state(torch_state)
    with torch.no_grad():
        for p in base.parameters():
            p.mul_(2.0)                          # a teacher with non-trivial outputs
    teacher = copy.deepcopy(base)
    if shift_layer not in (0, 1, 2):
        raise ValueError(f"shift_layer must be 0, 1 or 2, got {shift_layer}")
    weight = teacher.net[2 * shift_layer].weight       # (out, in) of the shifted layer
    delta = torch.randn(weight.shape[0], shift_rank, generator=g) @ torch.randn(shift_rank, weight.shape[1], generator=g)
    with torch.no_grad():
        weight += shift_scale * delta / delta.norm()
    x_train, x_test = torch.randn(n_train, 8, generator=g), torch.randn(n_test, 8, generator=g)
    with torch.no_grad():
        y_train = teacher(x_train) + noise * torch.randn(n_train, 4, generator=g)
        y_test = teacher(x_test)
    return base, teacher, (x_train, y_train), (x_test, y_test)


def _plot(history: History):
    from lab.viz.peft import finetune_figure

    return finetune_figure(history)


@experiment("peft_finetune", PeftConfig, paper="LoRA: Low-Rank Adaptation of Large Language Models",
            arxiv="2106.09685", plot=_plot,
            summary="Fine-tune a pretrained MLP on a low-rank-shifted task with one PEFT method",
            smoke={"steps": 3, "n_train": 16, "method": "adalora"})
def peft_finetune(cfg: PeftConfig) -> History:
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=1)
    check_int("rank", cfg.rank, minimum=1)
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    dev = resolve_device(cfg.device)
    model, _, (x, y), (x_test, y_test) = make_task(cfg.shift_rank, cfg.shift_scale, cfg.n_train, cfg.noise, cfg.seed,
                                                  shift_layer=cfg.shift_layer)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)      # adapter init and IST's draws: CPU
    if cfg.method in ("frozen", "full"):
        for p in model.parameters():
            p.requires_grad_(cfg.method == "full")
    else:
        with torch.device("cpu"):                  # adapters drawn on the CPU: the same on every device
            apply(model, cfg.method, rank=cfg.rank, generator=g)
    model = model.to(dev)
    x, y, x_test, y_test = _to(dev, x, y, x_test, y_test)
    with torch.no_grad():
        base_test = float(F.mse_loss(model(x_test), y_test))
    if cfg.method == "loku":
        # FILA: weight the init toward what task B needs more than task A (B = "forget", A = "retain")
        with torch.no_grad():
            y_a = model(x)
        fila_initialize(model, [(x, y)], [(x, y_a)], lambda m, b: F.mse_loss(m(b[0]), b[1]))
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = trainable_count(model)
    history = History(meta={"algorithm": cfg.method, "seed": cfg.seed})
    history.artifacts.update(trainable=n_trainable, base_test_loss=base_test, layers=list(adapters(model)))
    if cfg.method == "frozen":
        for step in progress.steps(cfg.steps, desc="frozen", history=history):
            history.append(step, loss=float(F.mse_loss(model(x), y).detach()), test_loss=base_test)
        return history
    opt = torch.optim.Adam(params, lr=cfg.lr)
    loss_fn = lambda: F.mse_loss(model(x), y)                                   # noqa: E731
    allocator = (RankAllocator(model, target_r=cfg.target_r, total_step=cfg.steps, tinit=cfg.steps // 10,
                               tfinal=cfg.steps // 5) if cfg.method == "adalora" else None)
    ist = IST(adapters(model), k=cfg.ist_k, generator=g) if cfg.method == "ist" else None
    glad = GLAD(params, lam=cfg.glad_lam) if cfg.method == "glad" else None
    rank_history = []
    for step in progress.steps(cfg.steps, desc=cfg.method, history=history):
        opt.zero_grad()
        if ist is not None:
            ist.select()
        if glad is not None:
            loss = glad.regularized_gradient(loss_fn)
        else:
            loss = loss_fn()
            # AdaLoRA: + γ·orthogonality penalty (γ = 0.1 here: the toy matrices are tiny; peft default 0.5)
            total = loss + orthogonal_regularizer(model, 0.1) if allocator is not None else loss
            total.backward()
        opt.step()
        if allocator is not None:
            allocator.update_and_allocate(step)     # reads the grads of this step
            rank_history.append(list(allocator.rank_pattern().values()))
        if ist is not None:
            ist.update_importance(loss_fn)
        with torch.no_grad():
            test_loss = float(F.mse_loss(model(x_test), y_test))
        history.append(step, loss=float(loss.detach()), test_loss=test_loss)
    if cfg.method != "full":
        with torch.no_grad():
            unmerged = model(x_test[:32])
            merge(model)
            merged = model(x_test[:32])
            unmerge(model)
        history.artifacts.update(merge_max_diff=float((merged - unmerged).abs().max()),
                                 unmerged=unmerged[:, 0].cpu().tolist(), merged=merged[:, 0].cpu().tolist())
    if allocator is not None:
        history.artifacts["rank_history"] = rank_history
    if ist is not None:
        history.artifacts.update(ist_counts=ist.counts.tolist(), ist_importance=ist.importance())
    return history


def peft_sweep(cfg: PeftConfig, methods: tuple[str, ...] = METHODS) -> Runs:
    """``peft_finetune`` once per method on the same config (for loss vs trainable parameters)."""
    from lab.experiments._base import replace

    return Runs({m: peft_finetune(replace(cfg, method=m)) for m in methods})


@dataclass(frozen=True)
class MergingConfig:
    """Config of ``checkpoint_merging``."""

    rank: int = 4  # LoRA rank
    lr: float = 0.05  # Adam learning rate (large: noisy iterates worth averaging)
    steps: int = 120  # optimizer steps
    batch_size: int = 8  # minibatch size (small: noisy gradients)
    checkpoint_every: int = 6  # checkpoint period in the second half of the run
    penalty: float = 2.0  # MWA penalty factor p (0 = uniform average)
    metric: Literal["loss", "step"] = "loss"  # MWA metric: training loss or training step
    n_models: int = 4  # ensemble members trained from scratch
    ensemble_train: int = 64  # training examples for the ensemble members (few: variance dominates)
    ensemble_steps: int = 150  # steps per ensemble member
    member_weight_decay: float = 0.0  # AdamW decoupled weight decay of each member (the paper: ~30x the usual)
    seed: int = 0  # seeds everything
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _merge_plot(history: History):
    from lab.viz.peft import merging_figure

    return merging_figure(history)


@experiment("checkpoint_merging", MergingConfig, paper="Parameter-Efficient Checkpoint Merging via "
            "Metrics-Weighted Averaging", arxiv="2504.18580", plot=_merge_plot,
            summary="MWA of LoRA checkpoints vs the last one vs uniform; ensemble vs single model",
            smoke={"steps": 4, "checkpoint_every": 1, "n_models": 2, "ensemble_steps": 2})
def checkpoint_merging(cfg: MergingConfig) -> History:
    check_positive("lr", cfg.lr)
    check_int("steps", cfg.steps, minimum=2)
    check_int("checkpoint_every", cfg.checkpoint_every, minimum=1)
    check_int("batch_size", cfg.batch_size, minimum=1)
    check_int("n_models", cfg.n_models, minimum=1)
    dev = resolve_device(cfg.device)
    model, _, (x, y), (x_test, y_test) = make_task(2, 3.0, 256, 0.3, cfg.seed)
    with torch.device("cpu"):
        apply(model, "lora", rank=cfg.rank, generator=torch.Generator().manual_seed(cfg.seed + 1))
    model = model.to(dev)
    x, y, x_test, y_test = _to(dev, x, y, x_test, y_test)
    g = torch.Generator(device=dev).manual_seed(cfg.seed + 1)                 # minibatch order
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    adapter_keys = [k for k, _ in model.named_parameters() if "lora_" in k]
    checkpoints, ckpt_steps, ckpt_losses = [], [], []
    history = History(meta={"algorithm": "mwa", "seed": cfg.seed})

    def test_loss() -> float:
        with torch.no_grad():
            return float(F.mse_loss(model(x_test), y_test))

    for step in progress.steps(cfg.steps, desc="lora", history=history):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=g, device=dev)
        loss = F.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(step, loss=float(loss.detach()), test_loss=test_loss())
        if step >= cfg.steps // 2 and (step + 1) % cfg.checkpoint_every == 0:
            state = model.state_dict()
            checkpoints.append({k: state[k].clone() for k in adapter_keys})
            with torch.no_grad():
                ckpt_losses.append(float(F.mse_loss(model(x), y)))
            ckpt_steps.append(step + 1)
    if not checkpoints:
        raise ValueError("no checkpoint was saved: lower checkpoint_every or raise steps")

    def loss_of(state) -> float:
        model.load_state_dict(state, strict=False)
        return test_loss()

    metrics = ckpt_losses if cfg.metric == "loss" else ckpt_steps
    weights = mwa_weights(metrics, cfg.penalty, cfg.metric)
    history.artifacts.update(
        test_loss_last=loss_of(checkpoints[-1]),
        test_loss_uniform=loss_of(mwa(checkpoints, metrics, penalty=0.0, metric=cfg.metric)),
        test_loss_mwa=loss_of(mwa(checkpoints, metrics, penalty=cfg.penalty, metric=cfg.metric)),
        weights=weights.tolist(), ckpt_steps=ckpt_steps, ckpt_losses=ckpt_losses)
    history.artifacts.update(ensemble_comparison(cfg.n_models, cfg.ensemble_train, cfg.ensemble_steps, cfg.seed,
                                                 weight_decay=cfg.member_weight_decay, device=dev))
    return history


def ensemble_comparison(n_models: int, n_train: int, steps: int, seed: int, weight_decay: float = 0.0,
                        device: torch.device | str = "cpu") -> dict:
    """Train ``n_models`` small MLPs from scratch (different seeds, same few noisy examples of
    task B; AdamW with ``weight_decay``) on ``device``; return their single and ensemble held-out losses."""
    check_positive("weight_decay", weight_decay, allow_zero=True)
    _, _, (x, y), (x_test, y_test) = make_task(2, 3.0, n_train, 0.3, seed)
    x, y, x_test, y_test = _to(torch.device(device), x, y, x_test, y_test)
    members, single = [], []
    for k in range(n_models):
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.manual_seed(seed * 1000 + k)
            net = MLP(8, (64,), 4, activation="tanh")
        net = net.to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=weight_decay)
        for _ in range(steps):
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            single.append(float(F.mse_loss(net(x_test), y_test)))
        members.append(net)
    with torch.no_grad():
        ens = float(F.mse_loss(Ensemble(members, task="regression")(x_test), y_test))
    return {"single_test_losses": single, "ensemble_test_loss": ens}


# ---------------------------------------------------------------------------------------------
# Claims of notebook 15 (checked over seeds 0..2 by ``pytest -m claims``)
# ---------------------------------------------------------------------------------------------
PEFT_METHODS = tuple(m for m in METHODS if m not in ("frozen", "full"))


def _every_peft_method_learns(runs: Runs) -> bool:
    frozen, full = runs["frozen"]["test_loss"][-1], runs["full"]["test_loss"][-1]
    return (all(full < runs[m]["test_loss"][-1] < 0.6 * frozen for m in PEFT_METHODS)
            and all(runs[m].artifacts["trainable"] < 0.4 * runs["full"].artifacts["trainable"] for m in PEFT_METHODS))


def _averaging_halves_the_loss(h: History) -> bool:
    a = h.artifacts
    return a["test_loss_uniform"] < 0.5 * a["test_loss_last"] and a["test_loss_mwa"] < 0.5 * a["test_loss_last"]


CLAIMS = [
    Claim(notebook="15_peft_and_merging", panel="single",
          text="A rank-4 LoRA (560 trainable parameters, the base frozen) brings the held-out loss of the "
               "low-rank-shifted task below 5 % of the frozen model's in 100 steps, and merging it into W0 "
               "changes the outputs by less than 1e-5.",
          experiment="peft_finetune", config={"method": "lora"}, control={"method": "frozen"},
          control_text="the frozen model keeps its loss (nothing trains)",
          holds=lambda h: (h["test_loss"][-1] < 0.05 * h.artifacts["base_test_loss"]
                           and h.artifacts.get("merge_max_diff", 1.0) < 1e-5)),
    Claim(notebook="15_peft_and_merging", panel="sweep",
          text="In 30 steps every PEFT method cuts the frozen model's held-out loss by at least 40 % while "
               "training under 40 % of the parameters that full fine-tuning trains (560-572 against 1,476; "
               "full fine-tuning gets lowest).",
          experiment=peft_sweep, base=PeftConfig(steps=30), config={"lr": 0.01}, control={"lr": 1e-4},
          control_text="at lr = 1e-4 thirty steps move almost nothing: LoRA keeps over 90 % of the frozen loss",
          holds=_every_peft_method_learns),
    Claim(notebook="15_peft_and_merging", panel="merging",
          text="Averaging the checkpoints of a noisy LoRA run (uniformly or by MWA) more than halves the "
               "held-out loss of its last checkpoint.",
          experiment="checkpoint_merging", base=MergingConfig(n_models=3, ensemble_steps=60),
          config={"lr": 0.05, "n_models": 3, "penalty": 2.0}, control={"lr": 0.005},
          control_text="at lr = 0.005 the iterates barely bounce: averaging gains 10-30 % only",
          holds=_averaging_halves_the_loss),
    Claim(notebook="15_peft_and_merging", panel="merging", name="ensemble",
          text="The ensemble of K = 3 small models trained from scratch on the same 64 examples has a lower "
               "held-out loss than each of its members.",
          experiment="checkpoint_merging", base=MergingConfig(n_models=3, ensemble_steps=60),
          config={"lr": 0.05, "n_models": 3, "penalty": 2.0}, control={"n_models": 1},
          control_text="K = 1: the ensemble is its single member",
          holds=lambda h: h.artifacts["ensemble_test_loss"] < min(h.artifacts["single_test_losses"])),
]
