"""Optimizer experiments: a small network on digits, and side-by-side comparisons.

- ``digits_mlp`` (registered experiment): any optimizer spec trains :class:`lab.models.MLP` on
  scikit-learn's 8x8 digits for a fixed number of minibatch steps. Per step the History holds the
  minibatch ``loss`` and ``accuracy``, the ``test_accuracy`` on the held-out split, ``evals``
  (the gradient or fitness evaluations spent so far: closure calls, i.e. forward+backward passes,
  1 per step for SGD/Adam and 2 for SAM/WSAM; one per population member for ES/EGGROLL) and the
  cumulative training ``wall_time`` (seconds spent in forward, backward and the optimizer step;
  evaluation is not counted; noisy on a shared machine). Optimizers with
  ``requires_closure = True`` (SAM, WSAM) get ``step(closure)``; the reported loss and accuracy
  are those of the closure's first call. Gradient-free ones (``requires_fitness = True``: ES,
  EGGROLL) get ``step(fitness)`` with the fitness of each population member = minus its minibatch
  loss (the MLP's members run batched through ``lab.optim.es.population_call``).
- :func:`compare_on_surface`: several optimizers on one 2-D surface (``optimizer_on_surface`` per
  spec) with shared lr, betas and weight decay; returns :class:`~lab.history.Runs`.
- :func:`compare_on_digits`: several optimizers on ``digits_mlp`` with the same budget; returns
  Runs, ready for a time-to-target table (:func:`target_rows`), in the spirit of AlgoPerf
  ("Benchmarking Neural Network Training Algorithms", arXiv 2306.07179): the score of an
  optimizer is the time it needs to reach a fixed validation target. Here time is counted in
  steps (and gradient evaluations where methods differ in cost per step), which a shared machine
  cannot disturb; seconds are shown beside them as a noisy, secondary column.

Every experiment here has ``device="auto"`` (CUDA when available, else CPU): data, model,
generators and optimizer state live there; the History gets plain floats.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lab import progress
from lab.checks import check_int, check_nonneg, check_positive
from lab.experiments._base import experiment, resolve_device, run
from lab.claims import Claim
from lab.history import History, Runs, target_rows, time_to_target
from lab.models import MLP
from lab.registry import get, make, parse_spec
from toy_envs.datasets import digits


@dataclass(frozen=True)
class DigitsConfig:
    """Config of ``digits_mlp``."""

    optimizer: str = "adam"  # registry name or spec with literal kwargs, "lion(lr=3e-4)"
    lr: float = 3e-3  # learning rate (a spec's own lr= wins)
    weight_decay: float = 0.0  # passed to the optimizer when non-zero
    steps: int = 150  # optimizer steps (the fixed budget)
    batch_size: int = 64  # minibatch size
    hidden: tuple[int, ...] = (64,)  # hidden layer sizes of the MLP
    seed: int = 0  # seed of the split, the initialization and the batch order
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def seeded_init_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from ``generator``.

    The same distribution family as torch's default ``nn.Linear`` init, but reproducible without
    touching the global random state. ``fan_in`` of a bias is that of its layer's weight. The
    draws happen on the generator's device (keep model and generator on one device).
    """
    fan_in = 1
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            draw = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=generator.device)
            p.copy_(draw * 2 * bound - bound)


def build_optimizer(spec: str, params, *, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    """``make("optimizer", spec, params, ...)`` with shared settings; the spec's own kwargs win.

    ``betas`` goes to optimizers whose constructor takes ``betas``; for those that take
    ``momentum`` instead (SGD, Signum, SGDP) its first entry becomes the momentum.
    """
    name, spec_kwargs = parse_spec(spec)
    accepted = inspect.signature(get("optimizer", name)).parameters
    shared: dict = {"lr": lr}
    if weight_decay:
        shared["weight_decay"] = weight_decay
    if betas is not None and "betas" in accepted:
        shared["betas"] = tuple(betas)
    elif betas is not None and "momentum" in accepted:
        shared["momentum"] = betas[0]
    return make("optimizer", name, params, **{**shared, **spec_kwargs})


def _plot_digits(history: History):
    from lab.viz import curves

    return curves(history, ["loss", "test_accuracy"])


@experiment("digits_mlp", DigitsConfig, paper="Benchmarking Neural Network Training Algorithms",
            arxiv="2306.07179", plot=_plot_digits, smoke={"steps": 3},
            summary="Any optimizer trains an MLP on the digits data with a fixed step budget")
def digits_mlp(cfg: DigitsConfig) -> History:
    check_positive("lr", cfg.lr)
    check_nonneg("weight_decay", cfg.weight_decay)
    check_int("steps", cfg.steps, minimum=1)
    check_int("batch_size", cfg.batch_size, minimum=1)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    x_train, y_train, x_test, y_test = (t.to(dev) for t in digits(seed=cfg.seed))
    with torch.device(dev):
        model = MLP(x_train.shape[1], cfg.hidden, 10)
    seeded_init_(model, generator)
    opt = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    needs_closure = bool(getattr(opt, "requires_closure", False))
    needs_fitness = bool(getattr(opt, "requires_fitness", False))
    history = History(meta={"algorithm": cfg.optimizer, "seed": cfg.seed})
    order = torch.randperm(len(y_train), generator=generator, device=dev)
    cursor, wall, evals = 0, 0.0, [0]
    rows = []                                                # per step, on the device
    written, stopped = 0, False

    def flush() -> None:                    # the steps run so far into the History (one sync)
        nonlocal written, stopped
        if stopped or written >= len(rows):
            return
        values = torch.stack([r[0] for r in rows[written:]]).cpu().tolist()    # (steps, 3)
        for step, ((loss, accuracy, test_accuracy), n_evals, seconds) in enumerate(
                zip(values, (r[1] for r in rows[written:]), (r[2] for r in rows[written:])), start=written):
            history.append(step, loss=loss, accuracy=accuracy, test_accuracy=test_accuracy,
                           evals=n_evals, wall_time=seconds)
            if not math.isfinite(loss):
                history.meta["diverged"] = step
                history.meta["warning"] = (f"{cfg.optimizer}: the loss became non-finite at step {step} "
                                           f"(lr = {cfg.lr:g}); lower lr")
                stopped = True
                return
        written = len(rows)

    for step in progress.steps(cfg.steps, desc=cfg.optimizer, history=history, flush=flush):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(y_train), generator=generator, device=dev), 0
        idx = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        xb, yb = x_train[idx], y_train[idx]                  # (B, 64), (B,)
        first_logits: list[torch.Tensor] = []

        def closure():
            opt.zero_grad()
            logits = model(xb)                               # (B, 10)
            if not first_logits:
                first_logits.append(logits.detach())
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            evals[0] += 1                                    # one forward + backward
            return loss

        start = time.perf_counter()
        if needs_fitness:
            loss = _fitness_step(opt, model, xb, yb, first_logits, evals)
        elif needs_closure:
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        wall += time.perf_counter() - start
        with torch.no_grad():
            accuracy = (first_logits[0].argmax(1) == yb).float().mean()
            test_accuracy = (model(x_test).argmax(1) == y_test).float().mean()
        rows.append((torch.stack([loss.detach().float(), accuracy, test_accuracy]), evals[0], wall))
        if step % 10 == 9 and not bool(torch.isfinite(loss)):  # a rare check: a sync on a GPU
            break
    flush()
    return history


def _fitness_step(opt, model, xb, yb, first_logits, evals: list[int]) -> torch.Tensor:
    """One step of a gradient-free optimizer (ES, EGGROLL): fitness = -minibatch loss per member.

    Returns the loss at the current parameters (one plain forward, logged like the others, not
    counted); ``evals[0]`` grows by the population size (one fitness evaluation per member).
    """
    from lab.optim.es import population_call

    def fitness(params_batch):
        logits = population_call(model, opt.params, params_batch, xb)        # (N, B, 10)
        n = logits.shape[0]
        evals[0] += n
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(n),
                                 reduction="none")                           # (N * B,)
        return -losses.reshape(n, -1).mean(dim=1)                            # (N,)

    with torch.no_grad():
        logits = model(xb)
        first_logits.append(logits)
        loss = F.cross_entropy(logits, yb)
        opt.step(fitness)
    return loss


# --------------------------------------------------------------------------------------------
# Comparisons (callables for panels: a config in, Runs out)

@dataclass(frozen=True)
class SurfaceCompareConfig:
    """Config of :func:`compare_on_surface`."""

    optimizers: tuple[str, ...] = (  # specs, compared on one surface
        "adam", "adabelief(rectify=False)", "diffgrad", "lion", "agd(delta=1e-5)")
    surface: str = "rosenbrock"  # one of toy_envs.surfaces.SURFACES
    lr: float = 0.05  # shared learning rate (a spec's own lr= wins)
    beta1: float | None = None  # betas[0] (momentum for SGD-like ones); None = each default
    beta2: float | None = None  # betas[1]; None = each optimizer's default
    weight_decay: float = 0.0  # shared weight decay
    steps: int = 300  # optimizer steps
    x0: float | None = None  # start x; None = the surface's default start
    y0: float | None = None  # start y; None = the surface's default start
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _with_betas(spec: str, cfg: SurfaceCompareConfig) -> str:
    """The spec with ``betas=(beta1, beta2)`` (or ``momentum=beta1``) added where accepted."""
    if cfg.beta1 is None and cfg.beta2 is None:
        return spec
    name, kwargs = parse_spec(spec)
    accepted = inspect.signature(get("optimizer", name)).parameters
    if "betas" in accepted and "betas" not in kwargs:
        default = accepted["betas"].default
        kwargs["betas"] = (default[0] if cfg.beta1 is None else cfg.beta1,
                           default[1] if cfg.beta2 is None else cfg.beta2)
    elif "momentum" in accepted and "momentum" not in kwargs and cfg.beta1 is not None:
        kwargs["momentum"] = cfg.beta1
    return name + "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")" if kwargs else name


def compare_on_surface(cfg: SurfaceCompareConfig) -> Runs:
    """Each optimizer of ``cfg.optimizers`` on ``cfg.surface``; Runs labelled by spec."""
    if not cfg.optimizers:
        raise ValueError("optimizers must name at least one optimizer spec")
    return Runs({spec: run("optimizer_on_surface", optimizer=_with_betas(spec, cfg),
                           surface=cfg.surface, lr=cfg.lr, steps=cfg.steps, x0=cfg.x0, y0=cfg.y0,
                           weight_decay=cfg.weight_decay, device=cfg.device)
                 for spec in cfg.optimizers})


DIGITS_SPECS: tuple[str, ...] = (
    "sgd(lr=0.1, momentum=0.9)", "adam(lr=1e-2)", "adamw(lr=1e-2, weight_decay=0.01)",
    "signsgd(lr=1e-2, momentum=0.9)", "adabelief(lr=3e-2)", "diffgrad(lr=1e-2)",
    "adamp(lr=1e-2)", "sgdp(lr=0.1, momentum=0.9)", "lion(lr=3e-3)",
    "lion_kappa(lr=0.3, kappa='l2')", "agd(lr=3e-3, delta=1e-5)",
)
"""Default digits line-up: each optimizer at a learning rate that suits it (a short tuning run)."""

OTHER_DIGITS_SPECS: tuple[str, ...] = (
    "sam(lr=0.1, base_kwargs={'momentum': 0.9})", "wsam(lr=0.1, base_kwargs={'momentum': 0.9})",
    "galore(lr=1e-2)", "fira(lr=1e-2)", "es", "eggroll",
)
"""Optimizers of the other lessons (sharpness, memory-efficient training, evolution strategies)."""


def digits_lineup() -> tuple[str, ...]:
    """:data:`DIGITS_SPECS` plus those of :data:`OTHER_DIGITS_SPECS` that are registered."""
    from lab.registry import available

    names = set(available("optimizer"))
    return DIGITS_SPECS + tuple(s for s in OTHER_DIGITS_SPECS if parse_spec(s)[0] in names)


LESSON_DIGITS_SPECS: tuple[str, ...] = (
    "sgd(lr=0.1, momentum=0.9)", "adam(lr=1e-2)", "adabelief(lr=3e-2)", "lion(lr=3e-3)",
    "agd(lr=3e-3, delta=1e-5)")
"""The line-up notebook 03 opens on (any of :func:`digits_lineup` can be added)."""


@dataclass(frozen=True)
class DigitsCompareConfig:
    """Config of :func:`compare_on_digits`."""

    optimizers: tuple[str, ...] = LESSON_DIGITS_SPECS  # specs, each with its own lr
    steps: int = 60  # the shared budget of optimizer steps
    batch_size: int = 64  # minibatch size
    seed: int = 0  # split, initialization and batch order (identical for every optimizer)
    target: float = 0.9  # test accuracy of the time-to-target table (kept in each run's meta)
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def compare_on_digits(cfg: DigitsCompareConfig) -> Runs:
    """Each optimizer of ``cfg.optimizers`` on ``digits_mlp`` with the same budget and seed."""
    if not cfg.optimizers:
        raise ValueError("optimizers must name at least one optimizer spec")
    runs = Runs({spec: run("digits_mlp", optimizer=spec, steps=cfg.steps,
                           batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device)
                 for spec in cfg.optimizers})
    for history in runs.values():
        history.meta["target"] = cfg.target
    return runs


@dataclass(frozen=True)
class AlgoPerfConfig:
    """Config of ``algoperf``."""

    optimizers: tuple[str, ...] = ("sgd(lr=0.1, momentum=0.9)", "adam(lr=1e-2)", "lion(lr=3e-3)",
                                   "agd(lr=3e-3, delta=1e-5)")  # specs, each with its tuned lr
    steps: int = 60  # the fixed budget of optimizer steps
    batch_size: int = 64  # minibatch size
    target: float = 0.9  # validation (test-split) accuracy to reach
    seed: int = 0  # split, initialization and batch order, shared by all optimizers
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_algoperf(history: History):
    from lab.viz.optim import algoperf_figures

    return algoperf_figures(history)[0]


@experiment("algoperf", AlgoPerfConfig, paper="Benchmarking Neural Network Training Algorithms",
            arxiv="2306.07179", plot=_plot_algoperf,
            smoke={"optimizers": ("sgd(lr=0.1, momentum=0.9)", "adam(lr=1e-2)"), "steps": 3},
            summary="Time-to-result benchmark: steps each optimizer needs to reach a target")
def algoperf(cfg: AlgoPerfConfig) -> History:
    """AlgoPerf's time-to-result rule on the digits workload, counted in steps.

    AlgoPerf scores a training algorithm by the time it needs to reach a fixed validation target
    on a fixed workload, with a fixed maximum budget (runs that miss the target get no time). On
    its dedicated hardware that time is wall-clock; on a shared CPU seconds are noise, so here the
    ranking counts optimizer steps (gradient evaluations where the methods differ in cost per
    step: SAM/WSAM take two per step, ES/EGGROLL one per population member) and shows seconds as a
    secondary, noisy column. The workload is ``digits_mlp``; every optimizer gets the same budget,
    seed, initialization and batches. One History row per optimizer, in ranking order:
    ``steps_to_target``, ``evals_to_target`` and ``seconds_to_target`` (NaN when not reached) and
    ``final_test_accuracy``; ``artifacts['table']`` holds the rows with labels and ranks,
    ``artifacts['runs']`` every run's History (as dicts).

    The runs are those of :func:`compare_on_digits`, one after the other; after each, the History
    is rewritten with the ranking of the runs finished so far, and the loop over the optimizers
    hands it to the progress hooks, so a live panel draws the table and the curves run by run.
    """
    check_positive("target", cfg.target)
    if not cfg.optimizers:
        raise ValueError("optimizers must name at least one optimizer spec")
    history = History(meta={"algorithm": "algoperf", "target": cfg.target, "seed": cfg.seed,
                            "ranked_by": "steps"})
    history.artifacts.update(table=[], runs={})
    runs = Runs()
    for spec in progress.track(cfg.optimizers, desc="algoperf", history=history):
        runs[spec] = run("digits_mlp", optimizer=spec, steps=cfg.steps, batch_size=cfg.batch_size,
                         seed=cfg.seed, device=cfg.device)
        runs[spec].meta["target"] = cfg.target
        history.artifacts["runs"][spec] = runs[spec].to_dict()
        _rank_into(history, runs, cfg.target)
    return history


def _rank_into(history: History, runs: Runs, target: float) -> None:
    """Rewrite ``history``'s rows, ``ranked_by`` and table with the time-to-target ranking of ``runs``."""

    def nan_if_none(value):
        return math.nan if value is None else value

    rows = target_rows(runs, "test_accuracy", target)
    history.rows.clear()
    for rank, row in enumerate(rows):
        history.append(rank, steps_to_target=nan_if_none(row["steps"]),
                       evals_to_target=nan_if_none(row["evals"]),
                       seconds_to_target=nan_if_none(row["seconds"]), final_test_accuracy=row["final"])
    history.meta["ranked_by"] = rows[0]["ranked_by"] if rows else "steps"
    history.artifacts["table"] = rows


# --------------------------------------------------------------------------------------------
# The lessons' claims (notebooks 00, 01, 03): each sentence with the run that shows it and the
# control that hides it; tests/test_claims.py checks them, the notebooks show them.

TOUR = SurfaceCompareConfig(optimizers=("sgd", "sgd(momentum=0.9)", "adam"), surface="quadratic",
                            lr=0.045, steps=100, x0=1.5, y0=1.8)
"""Notebook 00 opens on this: SGD, heavy ball and Adam on the kappa = 50 quadratic."""

SURFACE_LESSON = SurfaceCompareConfig(surface="quadratic", lr=0.01, steps=150, beta1=0.9,
                                      beta2=0.999, x0=1.5, y0=1.8)
"""Notebook 01 opens on this: the papers' adaptive optimizers on the quadratic, eta = 0.01."""

TOUR_CONTROLS = ("lr", "steps", "surface", "x0", "y0")
SURFACE_CONTROLS = ("optimizers", "surface", "lr", "steps", "beta1", "beta2", "weight_decay", "x0", "y0")
DIGITS_CONTROLS = ("optimizers", "steps", "batch_size", "target", "seed")
"""The fields notebooks 00, 01 and 03 expose as controls: a claim's config names all of them, so
its presets set every control at once."""


def settings(cfg, fields) -> dict:
    """``{field: value}`` of ``cfg`` for ``fields`` (a claim's config = a panel's full settings)."""
    return {f: getattr(cfg, f) for f in fields}


LION_BOX_DECAY = 2.0
"""Weight decay lambda of the Lion-box claim: the box is ||x||_inf <= 1 / lambda = 0.5."""


def _max_step(history: History) -> float:
    """Largest per-coordinate move of a surface run, max_t max_i |x_{t+1,i} - x_{t,i}|."""
    import numpy as np

    return float(np.abs(np.diff(history["xy"], axis=0)).max())


def _lion_in_box(runs: Runs) -> bool:
    import numpy as np

    return bool(np.abs(runs["lion"]["xy"][-1]).max() <= 1.0 / LION_BOX_DECAY + 1e-9)


def _agd_first(runs: Runs) -> bool:
    rows = target_rows(runs, "test_accuracy", next(iter(runs.values())).meta["target"])
    return rows[0]["optimizer"].startswith("agd") and rows[0]["rank"] == 1


CLAIMS = [
    Claim(
        notebook="00_tour", panel="tour", name="lr_cap",
        text="On the quadratic with condition number κ = 50, plain SGD is stable only for "
             "η < 2/κ = 0.04: at η = 0.045 it diverges, while heavy-ball momentum (stable up to "
             "2(1+μ)/κ ≈ 0.076) and Adam (steps of about η whatever the curvature) get within "
             "0.05 of the minimum in 100 steps.",
        experiment=compare_on_surface, base=TOUR, seed_field=None,
        config=settings(TOUR, TOUR_CONTROLS),
        holds=lambda runs: (runs["sgd"].meta.get("diverged") is not None
                            and runs["sgd(momentum=0.9)"]["distance"][-1] < 0.05
                            and runs["adam"]["distance"][-1] < 0.05),
        control={"lr": 0.035},
        control_text="η = 0.035 < 2/κ: SGD is stable too (it only crawls along the flat axis)",
    ),
    Claim(
        notebook="01_optimizers_on_surfaces", panel="surfaces", name="belief",
        text="Adam, diffGrad and Lion move each coordinate by at most about η per step, so at "
             "η = 0.01 Adam is still more than 0.3 from the quadratic's minimum after 150 steps. "
             "AdaBelief divides by how much the gradient changes, which is tiny along the smooth "
             "flat axis: it takes steps of several η there and arrives, as AGD does.",
        experiment=compare_on_surface, base=SURFACE_LESSON, seed_field=None,
        config=settings(SURFACE_LESSON, SURFACE_CONTROLS),
        holds=lambda runs: (runs["adabelief(rectify=False)"]["distance"][-1] < 0.05
                            and runs["agd(delta=1e-5)"]["distance"][-1] < 0.05
                            and runs["adam"]["distance"][-1] > 0.3
                            and _max_step(runs["adabelief(rectify=False)"]) > 2 * 0.01
                            and all(_max_step(runs[k]) <= 1.05 * 0.01
                                    for k in ("adam", "diffgrad", "lion"))),
        control={"lr": 0.05},
        control_text="η = 0.05: steps of about η are long enough for Adam to arrive in 150 steps too",
    ),
    Claim(
        notebook="01_optimizers_on_surfaces", panel="surfaces", name="lion_box",
        text="Lion's decoupled weight decay is a constraint (\"Lion secretly solves constrained "
             "optimization\", arXiv 2310.05898): with λ = 2 Lion ends inside the box "
             "‖x‖∞ ≤ 1/λ = 0.5 on Rosenbrock, although the minimum (1, 1) lies outside it.",
        experiment=compare_on_surface, base=SURFACE_LESSON, seed_field=None,
        config={**settings(SURFACE_LESSON, SURFACE_CONTROLS), "optimizers": ("lion", "adamw"),
                "surface": "rosenbrock", "lr": 0.05, "weight_decay": LION_BOX_DECAY, "x0": -1.5,
                "y0": 2.0},
        holds=_lion_in_box,
        control={"weight_decay": 0.0},
        control_text="λ = 0: no box, and Lion heads for (1, 1)",
    ),
    Claim(
        notebook="03_training_small_nets", panel="digits", name="agd_steps",
        text="Counted in steps to 90 % test accuracy, AGD (δ = 1e-5) comes first, ahead of Adam "
             "and SGD with momentum at their tuned learning rates.",
        experiment=compare_on_digits, base=DigitsCompareConfig(), seeds=3,
        config=settings(DigitsCompareConfig(), DIGITS_CONTROLS),
        holds=_agd_first,
        control={"optimizers": tuple(s if not s.startswith("agd") else "agd(lr=3e-3, delta=1.0)"
                                     for s in LESSON_DIGITS_SPECS)},
        control_text="δ = 1: AGD's denominator is δ on every coordinate, so it is SGD with "
                     "momentum at lr 3e-3 and falls behind",
    ),
]


__all__ = ["AlgoPerfConfig", "algoperf", "target_rows", "DigitsConfig", "digits_mlp", "seeded_init_", "build_optimizer", "time_to_target",
           "SurfaceCompareConfig", "compare_on_surface", "DigitsCompareConfig",
           "compare_on_digits", "DIGITS_SPECS", "OTHER_DIGITS_SPECS", "LESSON_DIGITS_SPECS",
           "digits_lineup", "TOUR", "SURFACE_LESSON", "TOUR_CONTROLS", "SURFACE_CONTROLS",
           "DIGITS_CONTROLS", "settings", "CLAIMS"]
