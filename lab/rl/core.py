"""The shared pieces of every policy-gradient method: one home each.

Notation (``spec/policy_losses.md``, Part F). ``B`` responses in contiguous groups of ``G`` per
prompt, ``T`` padded response tokens; ``m_{i,t}`` the ``mask`` (1 on tokens that enter the loss),
``L_i = Σ_t m_{i,t}`` the response length, ``ℓ_{i,t}`` the ``logprobs`` of the sampled tokens (with
grad), ``ℓ^old`` / ``ℓ^ref`` the behaviour / reference log-probs (detached), ``A`` the advantages
((B,) broadcast over valid tokens, or (B, T)), ``R_i`` the rewards.

Pieces (each used by every loss and estimator of ``lab.rl``; a variant swaps one piece):

- ``masked_sum / masked_mean / masked_var / masked_whiten``: statistics over valid tokens only.
- ``aggregate(x, mask, agg, norm)``: turns a per-token loss ``x_{i,t}`` into a scalar::

      token_mean               Σ_{i,t} m x / N_tok                         (DAPO)
      seq_mean_token_mean      (1/B') Σ_i (Σ_t m x / L_i)                  (GRPO paper, GSPO)
      seq_mean_token_sum       (1/B') Σ_i Σ_t m x                          (REINFORCE)
      seq_mean_token_sum_norm  Σ_{i,t} m x / (B · C)                       (Dr. GRPO, C = max length)

  ``B'`` counts the rows with ``L_i > 0``; ``B`` counts every row; ``C`` defaults to ``T``. Under
  gradient accumulation a per-micro-batch mean is a different estimator: pass
  ``norm=GlobalNorm.of(full_mask)`` so every micro-batch divides by the full batch's counts, and the
  micro-batch losses sum to the full-batch loss.
- ``group_stats / group_normalize``: per-prompt mean and std of the rewards, with groups given by
  ``group_size`` (contiguous) or ``group_ids`` (any labels); std ``"unbiased"`` (Bessel; lab
  default, as verl), ``"population"`` or ``"none"``; ``A = (R − mean_g) / (std_g + eps)``.
  A singleton group has mean = its reward, so its advantage is 0 (TRL's choice; verl returns R).
- ``ratio``: ``ρ = exp(clamp(ℓ − ℓ^old, −20, 20))`` (log-ratio clamped before ``exp``, as verl).
- ``clipped_surrogate``: ``pg = max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)A)``; with a dual clip ``c``
  (Ye et al., arXiv 1912.09729) ``pg ← min(pg, −cA)`` where ``A < 0``.
- ``kl``: Schulman's estimators with ``Δ = ℓ − ℓ^ref`` on samples from π:
  ``k1 = Δ``, ``k2 = Δ²/2``, ``k3 = exp(−Δ) − 1 + Δ`` (GRPO's estimator, verl's ``low_var_kl``).
- ``sequence_logprobs``: ``Σ_t m ℓ`` (or its mean over the response, ``normalize=True``).
- ``clipped_policy_loss``: the PPO-clip loss every GRPO-family method composes:
  ``L = agg(w · pg) + β · agg(KL)`` with optional detached per-token weights ``w``.
- ``policy_metrics / advantage_metrics``: the metrics dictionary of Part F.3 (floats).
- ``batch_hook``: a loss's full-batch precomputation of group- or batch-level quantities, which a
  loop runs once before splitting the batch into minibatches.
- ``call_with / make_fn``: how a training loop calls any estimator or loss. ``make_fn`` turns a
  registry spec (``"grpo(std='population')"``) into a callable (a class is instantiated once, so
  stateful methods keep their state); ``call_with(fn, batch)`` passes exactly the batch entries
  the callable's signature names, so one loop serves every method without per-method branches.

Dtypes: half-precision inputs are upcast to float32 (float64 stays float64); the loss keeps the
graph through ``logprobs`` even when the mask is empty (``loss = 0`` then).

Bad input (one home, :func:`prepare_policy_inputs`, :func:`as_mask`, :func:`valid_values`, used by
every loss and estimator; ``tests/rl/test_bad_input_table.py`` checks all registered ones):

- masks are bool or 0/1; any other value raises ``ValueError`` naming the mask;
- NaN/Inf on a valid token (mask 1) of ``logprobs``, ``old_logprobs``, ``ref_logprobs``,
  ``entropy``, ``values``, ``returns``, ``token_rewards`` ..., or in ``rewards``/``advantages``,
  raises ``ValueError`` naming the input (an input given but not needed by a mode is checked too);
- padding (mask 0) may hold anything, e.g. the −inf log-prob of a padded position: it is set to 0
  before any arithmetic, so it reaches neither the loss nor its gradient;
- shapes are checked with errors that name the input; an empty batch (B = 0) is valid and gives
  a loss of 0 (with the graph kept).
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from lab.checks import check_choice, check_number, check_positive, check_tensor
from lab.registry import get, parse_spec

AGG_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                              "seq_mean_token_sum_norm")
STD_MODES: tuple[str, ...] = ("unbiased", "population", "none")
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0


# ---------------------------------------------------------------------------------------------
# Validation and masks
# ---------------------------------------------------------------------------------------------
def as_float(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def as_mask(mask: torch.Tensor, like: torch.Tensor | None = None, name: str = "mask") -> torch.Tensor:
    """A bool or 0/1 mask as a float tensor (dtype of ``like``), shape-checked against it.

    Any other value (0.5, 2, −1, NaN) raises ``ValueError`` naming ``name``: a mask says which
    tokens count, it is not a weight (pass weights as ``token_weights``).
    """
    check_tensor(name, mask)
    if like is not None and mask.shape != like.shape:
        raise ValueError(f"{name} must have the shape of the per-token tensor {tuple(like.shape)}, "
                         f"got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex():
            raise TypeError(f"{name} must be a bool or 0/1 tensor, got {mask.dtype}")
        binary = (mask == 0) | (mask == 1)
        if not bool(binary.all()):
            bad = mask[~binary].flatten()[0].item()
            raise ValueError(f"{name} must hold only 0 and 1 (or be a bool tensor); found {bad!r} at "
                             f"{int((~binary).sum())} position(s)")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    return mask.to(dtype)


def valid_values(name: str, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``value`` with every entry outside ``mask`` replaced by 0, after checking the valid entries.

    NaN/Inf where ``mask`` is set raise ``ValueError`` naming ``name``; padding (mask 0) may hold
    anything (−inf log-probs, NaN) and never reaches a result or a gradient. ``mask`` has the
    shape of ``value``, or of its leading dims (a (B,) per-response tensor with a (B,) row mask).
    """
    valid = mask.bool()
    if valid.shape != value.shape:
        valid = valid.reshape(valid.shape + (1,) * (value.dim() - valid.dim())).expand(value.shape)
    bad = valid & ~torch.isfinite(value)
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or Inf on {int(bad.sum())} valid (mask = 1) "
                         f"position(s); only padding may hold non-finite values")
    return torch.where(valid, value, torch.zeros((), dtype=value.dtype, device=value.device))


def check_detached(name: str, value: torch.Tensor | None) -> None:
    """``value`` must not carry a gradient (old/ref log-probs, advantages, rewards)."""
    if value is not None and value.requires_grad:
        raise ValueError(f"{name} must be detached (it requires grad); pass {name}.detach()")


def check_rewards(rewards: Any, *, name: str = "rewards") -> torch.Tensor:
    """Rewards are a finite float tensor of shape (B,) or (B, K)."""
    check_tensor(name, rewards, ndim=(1, 2))
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if not torch.isfinite(rewards).all():
        raise ValueError(f"{name} contains NaN or Inf; score or drop those responses first")
    check_detached(name, rewards)
    return as_float(rewards)


def check_per_token(name: str, value: Any, shape: tuple[int, ...],
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """A floating (B, T) tensor of the given shape; with ``mask``, finite on the valid tokens and
    0 on padding (see :func:`valid_values`)."""
    check_tensor(name, value, dtype_kind="float")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (like logprobs), got {tuple(value.shape)}")
    value = as_float(value)
    return value if mask is None else valid_values(name, value, mask)


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------
def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ m·x over ``dim`` (all dims if None); masked entries are ignored even if NaN/-inf."""
    m = mask.bool()
    x = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ m·x / max(Σ m, 1): 0 where nothing is valid."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries (Bessel-corrected if ``unbiased``); 0 with < 2 entries."""
    count = mask.to(x.dtype).sum()
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    denom = count - 1.0 if unbiased else count
    return torch.where(denom > 0, sq / denom.clamp_min(1.0), torch.zeros((), dtype=x.dtype, device=x.device))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """``(x − mean_m x) / sqrt(var_m x + eps)`` over valid entries (unbiased var), 0 elsewhere.

    With fewer than two valid entries the variance is 0 and x is only centred (never NaN).
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def expand_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) or (B, T) advantages -> (B, T), zero on invalid tokens."""
    if advantages.dim() == 1:
        if advantages.shape[0] != mask.shape[0]:
            raise ValueError(f"advantages has {advantages.shape[0]} rows, mask has {mask.shape[0]}")
        advantages = advantages[:, None].expand(mask.shape)
    elif advantages.shape != mask.shape:
        raise ValueError(f"advantages must have shape (B,) or {tuple(mask.shape)}, "
                         f"got {tuple(advantages.shape)}")
    return torch.where(mask.bool(), advantages, torch.zeros((), dtype=advantages.dtype, device=advantages.device))


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlobalNorm:
    """Global denominators for :func:`aggregate` under gradient accumulation / data parallelism.

    Each field left as None is computed from the local (micro-batch) mask.

    Attributes:
        num_tokens: Σ m over the full batch (``token_mean``).
        num_seqs: rows with ``L_i > 0`` in the full batch (``seq_mean_*`` modes).
        num_rows: all rows of the full batch, ``B`` of ``seq_mean_token_sum_norm``.
        norm_const: the constant ``C`` of ``seq_mean_token_sum_norm`` (default: ``T``).
    """

    num_tokens: float | None = None
    num_seqs: float | None = None
    num_rows: float | None = None
    norm_const: float | None = None

    @classmethod
    def of(cls, mask: torch.Tensor, norm_const: float | None = None) -> "GlobalNorm":
        """The denominators of a full batch ``mask`` (B, T), to reuse for its micro-batches."""
        lengths = mask.to(torch.float64).sum(-1)
        return cls(num_tokens=float(lengths.sum()), num_seqs=float((lengths > 0).sum()),
                   num_rows=float(mask.shape[0]),
                   norm_const=float(mask.shape[1]) if norm_const is None else float(norm_const))


def aggregate(x: torch.Tensor, mask: torch.Tensor, agg: str = "token_mean",
              norm: GlobalNorm | None = None) -> torch.Tensor:
    """Reduce a per-token quantity ``x`` (B, T) to a scalar with one of :data:`AGG_MODES`.

    Empty rows contribute nothing; an all-empty mask gives 0 (keeping the graph through ``x``).
    """
    check_choice("agg", agg, AGG_MODES)
    if x.shape != mask.shape or x.dim() != 2:
        raise ValueError(f"x and mask must both be (B, T), got {tuple(x.shape)} and {tuple(mask.shape)}")
    norm = norm or GlobalNorm()
    m = mask.to(x.dtype)
    lengths = m.sum(-1)                                             # (B,)
    if agg == "token_mean":
        denom = norm.num_tokens if norm.num_tokens is not None else lengths.sum()
        return masked_sum(x, mask) / _at_least_one(denom, x)
    if agg == "seq_mean_token_sum_norm":
        rows = norm.num_rows if norm.num_rows is not None else x.shape[0]
        const = norm.norm_const if norm.norm_const is not None else x.shape[1]
        check_positive("norm_const", const)
        return masked_sum(x, mask) / (_at_least_one(rows, x) * const)
    per_seq = masked_sum(x, mask, dim=-1)                           # (B,)
    if agg == "seq_mean_token_mean":
        per_seq = per_seq / lengths.clamp_min(1.0)
    denom = norm.num_seqs if norm.num_seqs is not None else (lengths > 0).sum()
    return per_seq.sum() / _at_least_one(denom, x)


def _at_least_one(value: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).clamp_min(1.0)


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """log π(y_i|x) = Σ_t m ℓ (B,); with ``normalize`` the mean over the response (length 0 -> 0)."""
    total = masked_sum(as_float(logprobs), mask, dim=-1)
    return total / mask.to(total.dtype).sum(-1).clamp_min(1.0) if normalize else total


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupStats:
    """Per-response group statistics (each (B,) or (B, K)) and the group of each response."""

    mean: torch.Tensor
    std: torch.Tensor
    count: torch.Tensor
    index: torch.Tensor       # (B,) long, group of each response in 0..n_groups-1
    n_groups: int
    zero_std: torch.Tensor    # (n_groups,) bool: all rewards of the group are equal


def group_index(n: int, *, group_size: int | None = None, group_ids: torch.Tensor | None = None,
                device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """``(index (n,), n_groups)`` from ``group_size`` (contiguous groups) or ``group_ids`` (any labels).

    A training loop may pass both (its batch holds both); they must then describe the same groups.
    The index lives on ``group_ids``' device, else on ``device`` (default: the CPU).
    """
    if group_size is None and group_ids is None:
        raise ValueError("give group_size (contiguous groups) or group_ids")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int):
            raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
        if group_size < 1 or n % group_size:
            raise ValueError(f"group_size must be >= 1 and divide the batch size {n}, got {group_size}")
    if group_ids is None:
        return torch.arange(n, device=device) // group_size, n // group_size
    check_tensor("group_ids", group_ids, ndim=1)
    if group_ids.is_floating_point():
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if group_ids.shape[0] != n:
        raise ValueError(f"group_ids must have shape ({n},) like rewards, got {tuple(group_ids.shape)}")
    uniq, index = torch.unique(group_ids, return_inverse=True)
    if group_size is not None:
        rows = group_ids.view(-1, group_size)
        if not (rows == rows[:, :1]).all() or torch.unique(rows[:, 0]).numel() != rows.shape[0]:
            raise ValueError(f"group_ids do not form contiguous groups of group_size={group_size}")
    return index, int(uniq.numel())


def group_stats(rewards: torch.Tensor, *, group_size: int | None = None,
                group_ids: torch.Tensor | None = None, std: str = "unbiased") -> GroupStats:
    """Mean and std of each response's group (``std`` one of :data:`STD_MODES`).

    Unbiased std of a singleton group is defined as 0. With ``std="none"`` the std is 1.
    """
    rewards = check_rewards(rewards)
    check_choice("std", std, STD_MODES)
    index, n_groups = group_index(rewards.shape[0], group_size=group_size, group_ids=group_ids,
                                  device=rewards.device)
    idx = index.view(-1, *([1] * (rewards.dim() - 1))).expand_as(rewards)
    shape = (n_groups, *rewards.shape[1:])
    count = rewards.new_zeros(shape).scatter_add_(0, idx, torch.ones_like(rewards))
    total = rewards.new_zeros(shape).scatter_add_(0, idx, rewards)
    mean_g = total / count
    sq = rewards.new_zeros(shape).scatter_add_(0, idx, (rewards - mean_g[index]) ** 2)
    if std == "none":
        std_g = torch.ones_like(mean_g)
    else:
        denom = count - 1.0 if std == "unbiased" else count
        std_g = torch.where(denom > 0, sq / denom.clamp_min(1.0), torch.zeros_like(sq)).sqrt()
    spread = (rewards.new_full(shape, -math.inf).scatter_reduce(0, idx, rewards, "amax")
              - rewards.new_full(shape, math.inf).scatter_reduce(0, idx, rewards, "amin"))
    zero_std = spread == 0 if rewards.dim() == 1 else (spread == 0).all(-1)
    return GroupStats(mean_g[index], std_g[index], count[index], index, n_groups, zero_std)


def group_normalize(rewards: torch.Tensor, *, group_size: int | None = None,
                    group_ids: torch.Tensor | None = None, std: str = "unbiased",
                    eps: float = 1e-6) -> tuple[torch.Tensor, GroupStats]:
    """``A_i = (R_i − mean_g R) / (std_g R + eps)``; with ``std="none"`` just ``R_i − mean_g R``."""
    check_positive("eps", eps, allow_zero=True)
    stats = group_stats(rewards, group_size=group_size, group_ids=group_ids, std=std)
    centred = check_rewards(rewards) - stats.mean
    if std == "none":
        return centred, stats
    return centred / (stats.std + eps), stats


# ---------------------------------------------------------------------------------------------
# Ratio, clipping, KL
# ---------------------------------------------------------------------------------------------
def ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
          clamp: float = LOG_RATIO_CLAMP) -> torch.Tensor:
    """ρ = exp(clamp(ℓ − ℓ^old, −clamp, clamp)), computed in float32 or wider."""
    log_ratio = as_float(logprobs) - as_float(old_logprobs)
    return torch.exp(log_ratio.clamp(-clamp, clamp))


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps_low: float = 0.2,
                      clip_eps_high: float = 0.2, dual_clip: float | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO-clip loss and the boolean clip regions.

    ``pg = max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)·A)``; with ``dual_clip = c > 1``,
    ``pg ← min(pg, −c·A)`` where ``A < 0``. The bounds are numbers, or tensors broadcastable to
    ``ratio`` for per-token clipping (HAPO). Regions (TRL definitions): ``low`` = ρ < 1−ε_low and
    A < 0; ``high`` = ρ > 1+ε_high and A > 0; ``dual`` = A < 0 and ρ > c.
    """
    if isinstance(clip_eps_low, torch.Tensor) or isinstance(clip_eps_high, torch.Tensor):
        # per-token bounds (HAPO's adaptive clipping): tensors broadcastable to ratio
        lower = 1.0 - torch.as_tensor(clip_eps_low, dtype=ratio.dtype, device=ratio.device)
        upper = 1.0 + torch.as_tensor(clip_eps_high, dtype=ratio.dtype, device=ratio.device)
    else:
        check_clip_eps(clip_eps_low, clip_eps_high)
        lower = torch.tensor(1.0 - clip_eps_low, dtype=ratio.dtype, device=ratio.device)
        upper = torch.tensor(1.0 + clip_eps_high, dtype=ratio.dtype, device=ratio.device)
    if advantages.dim() == 1 and ratio.dim() == 2:
        advantages = advantages[:, None]
    pg_unclipped = -advantages * ratio                                          # (B, T)
    pg_clipped = -advantages * torch.clamp(ratio, lower, upper)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    neg = advantages < 0
    regions = {"low": (ratio < lower) & neg, "high": (ratio > upper) & (advantages > 0)}
    if dual_clip is not None:
        c = check_number("dual_clip", dual_clip)
        if c <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {c}")
        pg = torch.where(neg, torch.minimum(pg, -c * advantages), pg)
        regions["dual"] = neg & (ratio > c)
    return pg, regions


def check_clip_eps(clip_eps_low: float, clip_eps_high: float) -> None:
    """0 <= ε_low < 1 and ε_high >= 0, else ValueError naming the argument."""
    low = check_positive("clip_eps_low", clip_eps_low, allow_zero=True)
    check_positive("clip_eps_high", clip_eps_high, allow_zero=True)
    if low >= 1.0:
        raise ValueError(f"clip_eps_low must be < 1, got {low}")


def kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3",
       clamp: float = LOG_RATIO_CLAMP) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π, Δ = ℓ − ℓ^ref (clamped to ±clamp).

    ``k1 = Δ`` (unbiased, high variance, can be negative), ``k2 = Δ²/2``,
    ``k3 = exp(−Δ) − 1 + Δ`` (unbiased, always ≥ 0). The gradient flows through ``logprobs``.
    """
    check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    delta = (as_float(logprobs) - as_float(ref_logprobs)).clamp(-clamp, clamp)
    if estimator == "k1":
        return delta
    if estimator == "k2":
        return 0.5 * delta ** 2
    return torch.expm1(-delta) + delta


# ---------------------------------------------------------------------------------------------
# The PPO-clip policy loss shared by PPO, GRPO, Dr. GRPO, DAPO and their variants
# ---------------------------------------------------------------------------------------------
def kl_penalty(pg: torch.Tensor, pg_loss: torch.Tensor, logprobs: torch.Tensor,
               ref_logprobs: torch.Tensor | None, mask: torch.Tensor, *, beta: float,
               kl_estimator: str, agg: str, norm: "GlobalNorm | None" = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Add ``β · agg(KL)`` to a policy-gradient loss: one home for the reference penalty.

    Given the per-token surrogate ``pg`` (B, T) and its aggregate ``pg_loss``, returns
    ``(loss, per_token, kl_values)``: ``loss = pg_loss + β agg(KL)``, ``per_token = pg + β KL``,
    and the per-token KL estimate (None without ``ref_logprobs``; it is still reported as a metric
    when β = 0). ``β > 0`` without ``ref_logprobs`` is a ``ValueError``.
    """
    kl_values = None
    if ref_logprobs is not None:
        ref_logprobs = check_per_token("ref_logprobs", ref_logprobs, logprobs.shape, mask)
        check_detached("ref_logprobs", ref_logprobs)
        kl_values = kl(logprobs, ref_logprobs, kl_estimator)
    if beta > 0:
        if kl_values is None:
            raise ValueError("ref_logprobs is required when beta > 0")
        return pg_loss + beta * aggregate(kl_values, mask, agg, norm), pg + beta * kl_values, kl_values
    return pg_loss, pg, kl_values


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None,
                        advantages: torch.Tensor, mask: torch.Tensor, *,
                        ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                        clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
                        dual_clip: float | None = None, beta: float = 0.0, kl_estimator: str = "k3",
                        agg: str = "token_mean", norm: GlobalNorm | None = None,
                        token_weights: torch.Tensor | None = None,
                        return_per_token: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """``L = agg(w · max(−ρA, −clip(ρ)A)) + β · agg(KL_est(ℓ, ℓ^ref))``.

    Args:
        logprobs: (B, T) current log-probs of the sampled tokens, with grad.
        old_logprobs: (B, T) behaviour log-probs, detached; None means on-policy (ρ ≡ 1).
        advantages: (B,) or (B, T), detached.
        mask: (B, T) bool/float, tokens that enter the loss.
        ref_logprobs: (B, T) reference log-probs, required when ``beta > 0``.
        entropy: (B, T), only reported (metric ``entropy``).
        clip_eps_low, clip_eps_high: ε_low, ε_high of the clip range [1−ε_low, 1+ε_high].
        dual_clip: c > 1 bounding the loss of negative-advantage tokens (off when None).
        beta: β, weight of the KL loss term (gradient through ℓ).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
        agg, norm: token aggregation, see :func:`aggregate`.
        token_weights: optional detached (B, T) multipliers w of the per-token policy loss.
        return_per_token: also return ``metrics["per_token_loss"]`` (B, T).
    """
    logprobs, mask_f, advantages, old_logprobs = prepare_policy_inputs(
        logprobs, old_logprobs, advantages, mask)
    check_positive("beta", beta, allow_zero=True)
    rho = ratio(logprobs, old_logprobs)                                         # (B, T)
    adv = expand_advantages(advantages, mask_f)                                 # (B, T)
    pg, regions = clipped_surrogate(rho, adv, clip_eps_low, clip_eps_high, dual_clip)
    if token_weights is not None:
        token_weights = check_per_token("token_weights", token_weights, logprobs.shape, mask_f)
        check_detached("token_weights", token_weights)
        pg = pg * token_weights
    pg_loss = aggregate(pg, mask_f, agg, norm)
    # L = agg(pg) + β · agg(KL(π ‖ π_ref))
    loss, per_token, kl_values = kl_penalty(pg, pg_loss, logprobs, ref_logprobs, mask_f, beta=beta,
                                            kl_estimator=kl_estimator, agg=agg, norm=norm)
    metrics = policy_metrics(mask_f, loss=loss, pg_loss=pg_loss, ratio=rho, advantages=adv,
                             regions=regions, logprobs=logprobs, old_logprobs=old_logprobs,
                             kl=kl_values, entropy=entropy)
    if return_per_token:
        metrics["per_token_loss"] = per_token.detach()
    return loss, metrics


def prepare_policy_inputs(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None,
                          advantages: torch.Tensor, mask: torch.Tensor):
    """Check and upcast the common inputs: ``(logprobs, mask_f, advantages, old_logprobs)``.

    The one place every policy loss validates its inputs (issue 13, "no silent failure"):

    - ``logprobs`` (B, T) floating; ``mask`` bool or 0/1 of the same shape (:func:`as_mask`);
    - ``old_logprobs`` (B, T), detached; ``None`` becomes ``logprobs.detach()`` (on-policy, ρ ≡ 1);
    - ``advantages`` (B,) or (B, T), detached;
    - NaN/Inf on a valid token of ``logprobs``, ``old_logprobs`` or ``advantages`` (or in the
      advantage of a row that has a valid token) raises ``ValueError`` naming the input;
    - padding may hold anything (−inf log-probs of a padded position, NaN): it is replaced by 0
      here, so it reaches neither the loss nor the gradient (:func:`valid_values`);
    - an empty batch (B = 0) or an all-padding mask is valid: the losses then return 0 with the
      graph kept through ``logprobs``.
    """
    check_tensor("logprobs", logprobs, ndim=2, dtype_kind="float")
    logprobs = as_float(logprobs)
    mask_f = as_mask(mask, logprobs)
    logprobs = valid_values("logprobs", logprobs, mask_f)
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    old_logprobs = check_per_token("old_logprobs", old_logprobs, logprobs.shape, mask_f)
    check_detached("old_logprobs", old_logprobs)
    check_tensor("advantages", advantages, ndim=(1, 2), dtype_kind="float")
    check_detached("advantages", advantages)
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(f"advantages must have shape ({logprobs.shape[0]},) or {tuple(logprobs.shape)}, "
                         f"got {tuple(advantages.shape)}")
    advantages = as_float(advantages)
    rows = mask_f if advantages.dim() == 2 else mask_f.bool().any(-1)
    advantages = valid_values("advantages", advantages, rows)
    return logprobs, mask_f, advantages, old_logprobs


def check_token_inputs(mask: torch.Tensor, shape: tuple[int, ...],
                       **tensors: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """Validate optional per-token inputs (``ref_logprobs``, ``entropy``, ...) against ``mask``.

    For a loss that trains on a *reduced* mask (SPO's probability mask, PSR/NSR's sign mask): each
    given tensor must have ``shape`` and be finite on every token of the original ``mask``, even
    those the reduced mask drops, so a NaN is reported rather than silently skipped. Returns the
    tensors with padding set to 0 (None stays None).
    """
    return {name: None if value is None else check_per_token(name, value, shape, mask)
            for name, value in tensors.items()}


# ---------------------------------------------------------------------------------------------
# Metrics (Part F.3 names)
# ---------------------------------------------------------------------------------------------
def _f(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def policy_metrics(mask: torch.Tensor, *, loss: torch.Tensor | None = None,
                   pg_loss: torch.Tensor | None = None, ratio: torch.Tensor | None = None,
                   advantages: torch.Tensor | None = None,
                   regions: Mapping[str, torch.Tensor] | None = None,
                   logprobs: torch.Tensor | None = None, old_logprobs: torch.Tensor | None = None,
                   kl: torch.Tensor | None = None, entropy: torch.Tensor | None = None
                   ) -> dict[str, float]:
    """The standard metrics of a policy loss, masked over valid tokens (floats).

    ``loss``, ``pg_loss``, ``kl`` (mean estimator value), ``kl_old`` (mean ℓ^old − ℓ),
    ``entropy``, ``clip_frac`` (union of regions) and ``clip_frac_<region>``, ``ratio_mean/min/max``,
    the advantage statistics of :func:`advantage_metrics`, ``num_tokens``, ``num_seqs``.
    Entries whose inputs are not given are left out. ``ratio`` may be per-sequence (B,) (GSPO).
    """
    m = mask.bool()
    lengths = m.sum(-1)
    out: dict[str, float] = {}
    if loss is not None:
        out["loss"] = _f(loss)
    if pg_loss is not None:
        out["pg_loss"] = _f(pg_loss)
    if kl is not None:
        out["kl"] = _f(masked_mean(kl.detach(), m))
    if logprobs is not None and old_logprobs is not None:
        out["kl_old"] = _f(masked_mean((old_logprobs - logprobs).detach(), m))
    if entropy is not None:
        entropy = check_per_token("entropy", entropy.detach(), tuple(m.shape), m)
        out["entropy"] = _f(masked_mean(entropy, m))
    if regions is not None:
        valid = m if next(iter(regions.values())).dim() == 2 else lengths > 0
        union = torch.zeros_like(valid)
        for key, region in regions.items():
            out[f"clip_frac_{key}"] = _f(masked_mean(region.to(torch.float32), valid))
            union = union | region
        out["clip_frac"] = _f(masked_mean(union.to(torch.float32), valid))
    if ratio is not None:
        r = ratio.detach()
        valid = m if r.dim() == 2 else lengths > 0
        any_valid = bool(valid.any())
        out["ratio_mean"] = _f(masked_mean(r, valid))
        out["ratio_min"] = _f(r[valid].min()) if any_valid else 1.0
        out["ratio_max"] = _f(r[valid].max()) if any_valid else 1.0
    if advantages is not None:
        out.update(advantage_metrics(advantages, m))
    out["num_tokens"] = float(lengths.sum())
    out["num_seqs"] = float((lengths > 0).sum())
    return out


def advantage_metrics(advantages: torch.Tensor, mask: torch.Tensor | None = None,
                      stats: GroupStats | None = None) -> dict[str, float]:
    """``adv_mean``, ``adv_std`` (population), ``adv_abs_max``, ``adv_zero_frac`` over valid tokens
    (over responses when ``mask`` is None), and ``frac_zero_std_groups`` when ``stats`` is given."""
    a = advantages.detach()
    if mask is None:
        valid = torch.ones(a.shape, dtype=torch.bool, device=a.device)
    else:
        valid = as_mask(mask, a if a.dim() == 2 else None).bool()
        a = expand_advantages(a, valid)
    out = {"adv_mean": _f(masked_mean(a, valid)),
           "adv_std": _f(masked_var(a, valid, unbiased=False).sqrt()),
           "adv_abs_max": _f(a.abs()[valid].max()) if valid.any() else 0.0,
           "adv_zero_frac": _f(masked_mean((a == 0).to(a.dtype), valid))}
    if stats is not None:
        out["frac_zero_std_groups"] = _f(stats.zero_std.to(torch.float32).mean())
    return out


# ---------------------------------------------------------------------------------------------
# Calling estimators and losses from one training loop
# ---------------------------------------------------------------------------------------------
def make_fn(kind: str, spec: str) -> Callable[..., Any]:
    """A callable for registry spec ``"name(key=literal, ...)"`` of ``kind``.

    A registered function is bound to the spec's keyword arguments (``functools.partial``); a
    registered class is instantiated once with them (so a stateful estimator or loss keeps its
    state across calls) and the instance is returned.
    """
    name, kwargs = parse_spec(spec)
    obj = get(kind, name)
    if inspect.isclass(obj):
        return obj(**kwargs)
    _check_known_kwargs(obj, kwargs, f"{kind}/{name}")
    return functools.partial(obj, **kwargs) if kwargs else obj


def _check_known_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], label: str) -> None:
    params = inspect.signature(fn).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"{label} has no argument(s) {', '.join(unknown)}; "
                        f"arguments: {', '.join(params)}")


def batch_hook(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """The full-batch precomputation a loss declares (its ``batch_inputs`` attribute), or None.

    Some losses need quantities of a whole group or of the whole batch: GRAO's statistics over the
    group and its reference answer, HPT's per-prompt success count, COPO's cross-prompt global
    advantage and blend weight, GTPO's conflict runs. A training loop that splits the batch into
    minibatches must not recompute them on a partial group. Such a loss sets
    ``loss.batch_inputs = fn(batch entries...) -> {name: per-response tensor (B, ...)}``; the loop
    calls it once on the full batch (:func:`call_with`) and adds the tensors to the batch, and the
    loss uses them when it finds them among its arguments. The returned callable is bound to the
    spec's arguments that the hook also accepts (``"hpt(threshold=0.7)"`` reaches both).
    """
    base = getattr(fn, "func", fn)
    hook = getattr(base, "batch_inputs", None)
    if hook is None:
        return None
    bound = getattr(fn, "keywords", None) or {}
    accepted = inspect.signature(hook).parameters
    kwargs = {k: v for k, v in bound.items() if k in accepted}
    return functools.partial(hook, **kwargs) if kwargs else hook


def wants(fn: Callable[..., Any]) -> set[str]:
    """Names of the arguments ``fn`` accepts (a spec's bound arguments excluded)."""
    bound = getattr(fn, "keywords", None) or {}
    return {name for name in inspect.signature(fn).parameters if name not in bound}


def call_with(fn: Callable[..., Any], batch: Mapping[str, Any]) -> Any:
    """Call ``fn`` with the entries of ``batch`` its signature names, all by keyword.

    ``batch`` maps names of Part F.1 (``rewards``, ``group_size``, ``group_ids``, ``mask``,
    ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``entropy``, ``token_ids``, ``values``,
    ``advantages``, ``step``, ``lengths``, ...) to values. Entries the signature does not name
    are ignored; an entry that is None is left to the argument's default; a spec's bound
    arguments (``functools.partial`` keywords) are never overridden. A required argument that the
    batch lacks raises ``TypeError`` naming it. Example::

        estimator = make_fn("advantage", "grpo(std='population')")
        advantages, metrics = call_with(estimator, {"rewards": r, "group_size": 4, "mask": m})
    """
    bound = getattr(fn, "keywords", None) or {}
    kwargs = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name in bound or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = batch.get(name)
        if value is not None:
            kwargs[name] = value
        elif param.default is inspect.Parameter.empty:
            label = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__",
                                                            type(fn).__name__)
            raise TypeError(f"{label} needs {name!r}, which the batch does not provide; "
                            f"batch has: {', '.join(k for k, v in batch.items() if v is not None)}")
    return fn(**kwargs)


__all__ = [
    "AGG_MODES", "STD_MODES", "KL_ESTIMATORS", "GlobalNorm", "GroupStats",
    "as_float", "as_mask", "valid_values", "check_detached", "check_rewards", "check_per_token",
    "masked_sum", "masked_mean", "masked_var", "masked_whiten", "expand_advantages",
    "aggregate", "sequence_logprobs", "group_index", "group_stats", "group_normalize",
    "ratio", "clipped_surrogate", "check_clip_eps", "kl", "clipped_policy_loss", "prepare_policy_inputs",
    "check_token_inputs",
    "policy_metrics", "advantage_metrics", "make_fn", "batch_hook", "wants", "call_with",
]
