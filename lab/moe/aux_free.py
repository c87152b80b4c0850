"""Auxiliary-loss-free load balancing (ALF-LB): per-expert selection biases updated as dual prices.

Paper: "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts", Wang et al., arXiv
2408.15664 (DeepSeek's rule, used in the "DeepSeek-V3 Technical Report", arXiv 2412.19437) and its
primal-dual analysis "A Theoretical Framework for Auxiliary-Loss-Free Load Balancing of Sparse
Mixture-of-Experts in Large-Scale AI Models", Han & Zhong, arXiv 2512.03915.

The update: T tokens, E experts, k per token, affinities (router scores) ``gamma_{t,i}``, bias
(dual price) ``p_i``, load ``A_i`` = assignments to expert i in a step, target ``L = kT/E``, step
size ``eps_i^n``. The assignment problem and its Lagrangian (expert constraints priced by p; the
token constraint ``sum_i x_{t,i} = k`` is kept and solved by top-k)::

    max_x sum_{t,i} gamma_{t,i} x_{t,i}   s.t.  sum_i x_{t,i} = k,  sum_t x_{t,i} = L,  x in {0, 1}
    Lagr(x, p) = sum_{t,i} (gamma_{t,i} + p_i) x_{t,i} - L sum_i p_i

One primal-dual step per training iteration n::

    primal:  x_{t,i} = 1[i in TopK_j(gamma_{t,j} + p_j^n)]          (the router's biased selection)
    dual:    p_i^{n+1} = p_i^n + eps_i^n (L - A_i^n)                  (``update(load)``)

Step-size schedules (``schedule``; ``u`` is the speed):

    "sign"        eps_i^n = u / |L - A_i^n|   ->  p_i += u * sign(L - A_i)   (DeepSeek, u = 1e-3)
    "linear"      eps^n   = u / L             ->  p_i += u * (L - A_i) / L   (constant step)
    "inv_n"       eps^n   = u / (L n)         (decaying; logarithmic regret, see below)
    "inv_sqrt_n"  eps^n   = u / (L sqrt(n))   (decaying; the merely-convex rate)

Intuition: an overloaded expert's price falls and an underloaded one's rises, until the biased
top-k spreads the tokens; no gradient and no loss term interferes with the language-model loss.

Where it departs from the Switch aux loss: no auxiliary loss at all (``aux_loss`` is 0): balance
comes from a bias on the *selection*, updated outside backpropagation. The gate weights never see p
(they come from the unbiased scores, see :mod:`lab.moe.router`), so balancing changes *which*
experts a token uses but not the weights of a chosen expert.

Choices:
- The target L is the step's mean load ``mean_i A_i`` (= kT/E), so ``update`` needs only the load.
- A step with no token (all loads 0) changes nothing, not even the step count n.
- ``"inv_n"`` is the standard strongly-convex schedule ``u/(L n)`` (an [unverified] reading of the
  theory paper's "certain step-size choices"; u of order ``L / mu``); n counts from 1.
- With group-limited routing (:class:`lab.moe.router.TopKRouter` ``n_group``/``topk_group``, as
  DeepSeek-V3) the group scores are computed on the biased selection ``s + p``, as in Hugging Face's
  ``DeepseekV3TopkRouter``.
- On a Hugging Face DeepSeek-V3 model (:func:`lab.moe.hf.attach`, ``update_rate`` = u) the
  controller writes its biases into the router's ``e_score_correction_bias`` buffer, starting from
  the buffer's values (a pretrained model keeps its correction), and ``detach`` restores them; on
  Mixtral/Qwen the hook re-selects ``TopK(softmax(h) + p)`` and keeps the unbiased gates.

State (``state_dict``): ``bias`` (E,) the dual prices p (float64, on ``device``: the router's, to avoid
a copy per step), and ``n`` the number of updates.

Why these. ``f(p) = max_x Lagr(x, p) = sum_t TopKSum(gamma_t + p) - L sum_i p_i`` is the LP dual
function: convex, >= the LP optimum for every p, with (sub)gradient ``A(p) - L``. So the dual step is
(online) subgradient descent on f. In the deterministic setting (fixed gamma) f decreases
monotonically while consecutive violations stay aligned, ``<A^{n+1} - L, A^n - L> >= 0`` (f is
convex along the step, with non-positive slope at both ends) - the small-step condition of the
theory paper's monotone-improvement result [derived here; the paper's exact constant is
unverified]. A token that changes experts always moves from i to j with ``p_j`` raised relative to
``p_i`` - with the sign rule from an overloaded to an underloaded expert, never the reverse (the
paper's preference rule). Online (fresh tokens each step) the expected dual is strongly convex, so
a decaying ``eps^n ~ 1/(mu n)`` gives O(log n) expected regret; the theory paper proves a
logarithmic bound "under certain step-size choices" - we use the standard strongly-convex schedule
``u/(L n)`` (u of order ``L / mu``; an [unverified] reading of the exact schedule). A constant sign
step keeps oscillating in a band of width ~u around the optimum, so its regret grows linearly.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lab.checks import check_choice, check_int, check_positive, check_tensor
from lab.registry import register

SCHEDULES = ("sign", "linear", "inv_n", "inv_sqrt_n")


def dual_step(load: torch.Tensor, n: int, u: float, schedule: str) -> torch.Tensor:
    """``eps^n (L - A)``: the change of the biases after step n (n >= 1) with load A (..., E).

    Leading axes are independent runs (the regret test simulates several side by side).
    """
    check_choice("schedule", schedule, SCHEDULES)
    check_int("n", n, minimum=1)
    target = load.mean(-1, keepdim=True)  # L = kT / E
    violation = target - load  # (E,)  L - A_i
    if schedule == "sign":
        # eps_i = u / |L - A_i|  =>  u * sign(L - A_i)
        return u * torch.sign(violation)
    scale = {"linear": 1.0, "inv_n": 1.0 / n, "inv_sqrt_n": 1.0 / math.sqrt(n)}[schedule]
    # eps^n = u * scale / L
    return (u * scale / target.clamp_min(1e-12)) * violation


@register("balancer", "aux_free_bias",
          paper="A Theoretical Framework for Auxiliary-Loss-Free Load Balancing of Sparse Mixture-of-Experts "
                "in Large-Scale AI Models", arxiv="2512.03915",
          summary="Loss-free balancing: per-expert selection biases updated by p += eps (L - A)")
class AuxFreeBias:
    """Bias controller of auxiliary-loss-free balancing (a dual-price update, no gradient).

    State (``state_dict``): ``bias`` (E,) the dual prices p, and ``n`` the number of updates.

    Args:
        n_experts: E.
        u: bias update speed (DeepSeek: 1e-3 with the sign rule).
        schedule: step-size schedule, one of ``"sign"``, ``"linear"``, ``"inv_n"``, ``"inv_sqrt_n"``.
        device: where the biases live (float64); the router's device avoids a copy per step.
    """

    def __init__(self, n_experts: int, *, u: float = 1e-3, schedule: str = "sign",
                 device: torch.device | str | None = None):
        self.n_experts = check_int("n_experts", n_experts, minimum=1)
        self.u = check_positive("u", u)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.bias = torch.zeros(n_experts, dtype=torch.float64, device=device)
        self.n = 0

    def selection(self, scores: torch.Tensor) -> torch.Tensor:
        """``s + p``: the scores that choose the experts (the gates keep using ``s``)."""
        if scores.shape[-1:] != (self.n_experts,):
            raise ValueError(f"scores must have shape (..., {self.n_experts}), got {tuple(scores.shape)}")
        return scores + self.bias.to(scores)

    @torch.no_grad()
    def update(self, load: torch.Tensor) -> dict[str, Any]:
        """One dual step from the step's load ``A`` (E,); returns ``{"bias", "step"}``."""
        check_tensor("load", load, shape=(self.n_experts,), finite=True)
        if (load < 0).any():
            raise ValueError("load must be non-negative counts per expert")
        load = load.to(self.bias)
        if load.sum() == 0:  # no tokens this step: nothing to learn
            return {"bias": self.bias.clone(), "step": torch.zeros_like(self.bias)}
        self.n += 1
        # p^{n+1} = p^n + eps^n (L - A^n)
        step = dual_step(load, self.n, self.u, self.schedule)
        self.bias += step
        return {"bias": self.bias.clone(), "step": step}

    def state_dict(self) -> dict[str, Any]:
        return {"bias": self.bias.clone(), "n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"bias", "n"} - set(state)
        if missing:
            raise KeyError(f"state must hold 'bias' and 'n', missing {sorted(missing)}")
        bias = check_tensor("bias", state["bias"], shape=(self.n_experts,), finite=True)
        self.bias = bias.detach().to(device=self.bias.device, dtype=torch.float64).clone()
        self.n = check_int("n", int(state["n"]), minimum=0)

    def __repr__(self) -> str:
        return f"AuxFreeBias(n_experts={self.n_experts}, u={self.u}, schedule={self.schedule!r})"


__all__ = ["AuxFreeBias", "SCHEDULES", "dual_step"]
