"""EGAE: generalized advantage estimation extended to truncated (unfinished) responses.

Paper: "Truncated Proximal Policy Optimization", Fan et al., arXiv 2506.15050 (no public code).

T-PPO does not wait for every long response to finish: it generates in fixed windows and updates
on what exists so far. A response cut at length l (not finished) has no final reward and no state
after its last token, so EGAE bootstraps that state with the last value available,
V(s_l) := V(s_{l−1}).

The estimator: per row, with r_t the token rewards, V(s_t) the critic's values, γ the discount
and λ the GAE weight, backwards over the valid tokens t = l−1, …, 0:

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t),            V(s_l) = 0 if finished else V(s_{l−1})
    Â_t = δ_t + γλ·Â_{t+1},                        Â_l = 0
    R̂_t = Â_t + V(s_t)   (returns; the value model trains only on finished rows, see tppo)

For a finished response this is ordinary GAE (Schulman et al., arXiv 1506.02438); for an
unfinished one the last residual is δ_{l−1} = r_{l−1} + (γ − 1)·V(s_{l−1}) (0 when γ = 1 and
r = 0), and with γ = λ = 1 the advantage telescopes to Â_t = V(s_{l−1}) − V(s_t). As the window
grows every response finishes inside it and EGAE becomes the full-episode GAE.

Where it departs from PPO's GAE: only the bootstrap of unfinished rows (GAE treats the end of the
row as terminal, V = 0, which biases every advantage of a truncated response downwards).

Choices ([unverified]: the exact bootstrap rule, γ and λ come from a third-party summary): γ = 1,
λ = 0.95 and whitening over valid tokens as the lab's ``advantage/gae``; with ``rewards`` (B,) and
no ``token_rewards`` the outcome reward is placed on the last token of *finished* rows only (an
unfinished response has not been scored); ``is_finished=None`` means every row is finished (GAE).
The recursion is the lab's ``advantage/gae`` itself (see :func:`extended_gae`), so masks are
prefixes as there.

Where to run it: in ``policy_optimization`` (``advantage="egae"``) every response is a complete,
scored episode, so EGAE equals GAE there; the experiment ``truncation_window``
(``lab.experiments.segments``) cuts responses at a window w and shows EGAE approaching the
full-episode GAE as w grows, closer than treating the cut as the end of the episode.
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_range, check_tensor
from lab.registry import register
from lab.rl.core import as_float, as_mask, check_per_token, check_rewards
from lab.rl.ppo import gae

PAPER = "Truncated Proximal Policy Optimization"
ARXIV = "2506.15050"


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of each row's last valid token (−1 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values


def finished_from_tokens(token_ids: torch.Tensor, mask: torch.Tensor, eos_id: int = 1) -> torch.Tensor:
    """(B,) bool: the row's last valid token is ``<eos>`` (it ended inside the window)."""
    check_tensor("token_ids", token_ids, shape=tuple(mask.shape))
    last = last_index(mask)
    return (last >= 0) & (token_ids.gather(1, last.clamp_min(0)[:, None]).squeeze(1) == eos_id)


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor,
                          is_finished: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) token rewards with R_i on the last valid token of each finished row."""
    rewards = check_rewards(rewards)
    last = last_index(mask)                                                     # (B,)
    finished = torch.ones_like(last, dtype=torch.bool) if is_finished is None else is_finished.bool()
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    rows = torch.nonzero(finished & (last >= 0)).flatten()
    out[rows, last[rows]] = rewards[rows]
    return out


def extended_gae(values: torch.Tensor, token_rewards: torch.Tensor, mask: torch.Tensor, *,
                 is_finished: torch.Tensor | None = None, gamma: float = 1.0, lam: float = 0.95,
                 whiten: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """EGAE through the lab's ``advantage/gae``: ``(advantages (B, T), gae's metrics)``.

    GAE ends every row with V = 0. Bootstrapping an unfinished row with V(s_l) := V(s_{l−1}) only
    changes its last residual by γ·V(s_{l−1}), so EGAE is GAE on the token rewards

        r'_t = r_t + γ·V(s_{l−1})·1[t = l − 1]·1[row unfinished]

    (the returns in ``metrics["returns"]`` include that bootstrap). Masks are prefixes, as GAE's.
    """
    check_tensor("values", values, ndim=2, dtype_kind="float")
    values = as_float(values.detach())
    m = as_mask(mask, values)
    values = check_per_token("values", values, tuple(values.shape), m)          # 0 on padding
    token_rewards = check_per_token("token_rewards", token_rewards, tuple(values.shape), m)
    n = values.shape[0]
    if is_finished is None:
        finished = torch.ones(n, dtype=torch.bool, device=values.device)
    else:
        check_tensor("is_finished", is_finished, shape=(n,))
        finished = is_finished.bool()
    last = last_index(m)                                                        # (B,)
    rows = torch.nonzero(~finished & (last >= 0)).flatten()
    shaped = token_rewards.clone()
    # r'_{l−1} = r_{l−1} + γ V(s_{l−1}) on unfinished rows
    shaped[rows, last[rows]] += check_range("gamma", gamma, 0.0, 1.0) * values[rows, last[rows]]
    return gae(shaped, values, m, gamma=gamma, lam=lam, whiten=whiten)


@register("advantage", "egae", paper=PAPER, arxiv=ARXIV,
          summary="Extended GAE: GAE that bootstraps truncated responses with their last value")
def egae(rewards: torch.Tensor | None = None, *, values: torch.Tensor, mask: torch.Tensor,
         token_rewards: torch.Tensor | None = None, is_finished: torch.Tensor | None = None,
         gamma: float = 1.0, lam: float = 0.95, whiten: bool = True
         ) -> tuple[torch.Tensor, dict[str, Any]]:
    """EGAE token advantages (B, T), whitened over valid tokens when ``whiten``; like
    ``advantage/gae`` the metrics carry the tensor ``returns`` (R̂ = Â + V) for the value loss.

    Args:
        rewards: (B,) outcome rewards, used when ``token_rewards`` is None.
        values: (B, T) critic values V(s_t) (detached here).
        mask: (B, T) tokens generated so far.
        token_rewards: (B, T) per-token rewards (e.g. with a KL penalty folded in).
        is_finished: (B,) bool, the response ended inside the window (see
            :func:`finished_from_tokens`); None = every row is a complete episode (then EGAE is
            GAE: a response cut by ``max_new_tokens`` in an ordinary rollout is terminal and scored).
        gamma, lam: γ, λ.
        whiten: normalize the advantages over valid tokens (mean 0, std 1).
    """
    if rewards is not None:                           # validated even when token_rewards win
        rewards = check_rewards(rewards)
        if rewards.shape != values.shape[:1]:
            raise ValueError(f"rewards must have shape ({values.shape[0]},) like the rows of values, "
                             f"got {tuple(rewards.shape)}")
    if token_rewards is None:
        if rewards is None:
            raise ValueError("egae needs rewards (B,) or token_rewards (B, T)")
        token_rewards = outcome_token_rewards(rewards, as_mask(mask, values),
                                              is_finished)
    advantages, metrics = extended_gae(values, token_rewards, mask, is_finished=is_finished,
                                       gamma=gamma, lam=lam, whiten=whiten)
    if is_finished is not None:
        metrics["egae/finished_frac"] = float(is_finished.to(torch.float32).mean())
    return advantages, metrics


__all__ = ["egae", "extended_gae", "finished_from_tokens", "last_index", "outcome_token_rewards"]
