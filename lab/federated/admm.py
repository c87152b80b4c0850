"""Noise-robust ADMM federated learning: drop the dual variable so link noise cannot pile up.

Lari, Arablouei, Gogineni, Werner, "Noise-Robust and Resource-Efficient ADMM-based Federated
Learning", arXiv:2409.13451. Problem (weighted least squares): ``min_w sum_k f_k(w)``,
``f_k(w) = 1/(2 n_k) ||X_k w - y_k||^2 = 1/2 w^T A_k w - b_k^T w + const``.

Standard consensus ADMM (``variant="standard"``), constraint w_k = z, penalty rho, duals lambda_k:

    w_k^{t+1} = argmin_w f_k(w) + lambda_k^T (w - z) + rho/2 ||w - z||^2 = (A_k + rho I)^{-1} (b_k + rho z - lambda_k)
    z^{t+1}   = (1/K) sum_k (w_k^{t+1} + lambda_k / rho) = (1/K) sum_k w_k^{t+1}   (as sum_k lambda_k = 0)
    lambda_k  <- lambda_k + rho (w_k - z)

Clients send w_k and the server averages them, relying on ``sum_k lambda_k = 0``, which exact
ADMM keeps. The dual lambda_k is a running *sum* of consensus errors, so with noisy links (the
client receives ``z + n``, the server receives ``w_k + m``) ``sum_k lambda_k`` integrates the
noise like a random walk and the error of z drifts up. Eliminating lambda shows each local update
then depends on two received global models (``2 z^t - z^{t-1}``), each noisy.

Dual-free variant (``variant="dual_free"``, the default). At a consensus fixed point the dual
equals ``lambda_k = -grad f_k(w_k)``; eliminating lambda with that identity leaves the term
``rho (z^{t-1} - z^t)`` that needs the previous global model too. The dual-free update drops it,
so each local step uses the *single* model it just received, z~:

    w_k <- argmin_w f_k(w) - grad f_k(w_k)^T (w - z~) + rho/2 ||w - z~||^2      (least squares: (A_k + rho I)^{-1} (A_k w_k + rho z~))
    u_k  = w_k_new - grad f_k(w_k_old) / rho    (sent);      z = (1/K) sum_k u_k

Fixed point: w_k = z and ``z = z - (1/(K rho)) sum_k grad f_k(z)``, i.e. ``sum_k grad f_k(z) = 0``:
the exact optimum w*, with no accumulator left for the noise to random-walk in (the local map is
a contraction of (w_k, z~)). The paper's second change, ``continue_when_idle``: clients the
server did not select keep applying the local update with the last model they received (the
simulator calls :meth:`idle_updates`), which pulls stale local models toward consensus.

Lab choices (the paper's algorithm box was not available; the spec marks these [unverified]):

- the dual-free update above is the lab's derivation of "eliminate the dual, use one noisy global
  model per local update"; a client's first update (no w_k yet) is the plain proximal step;
- the standard variant updates its dual with the model it just received, before the primal step
  (the usual client-side ordering), and sends ``u_k = w_k``; the dual-free one sends
  ``u_k = w_k - grad f_k(w_k_old) / rho``;
- updates travel as ``Delta = u_k - z~``; the server reconstructs ``z + Delta``, so downlink and
  uplink noise both reach the reconstructed model, as in the paper's model exchange;
- ``solver="exact"`` solves the local problem in closed form (least squares only);
  ``solver="sgd"`` takes ``steps`` gradient steps on it (any problem); ``"auto"`` picks exact
  when the data allow; the server averages only clients it has heard from at least once.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lab.checks import check_choice, check_positive
from lab.federated.base import Aggregator, local_sgd, stack_updates
from lab.registry import register


@register("aggregator", "admm_robust", paper="Noise-Robust and Resource-Efficient ADMM-based Federated Learning",
          arxiv="2409.13451")
class RobustADMM(Aggregator):
    """Consensus ADMM for federated least squares, standard or dual-free (noise-robust).

    Args:
        rho: penalty rho > 0.
        variant: ``"dual_free"`` (the paper's noise-robust update) or ``"standard"`` ADMM.
        solver: ``"auto"``, ``"exact"`` (least squares) or ``"sgd"`` (``steps`` gradient steps).
        continue_when_idle: unselected clients keep updating with their last received model.
    """

    def __init__(self, *, rho: float = 1.0, variant: str = "dual_free", solver: str = "auto",
                 continue_when_idle: bool = True, batch_size: int | None = None):
        super().__init__(server_lr=1.0, batch_size=batch_size)
        self.rho = check_positive("rho", rho)
        self.variant = check_choice("variant", variant, ("dual_free", "standard"))
        self.solver = check_choice("solver", solver, ("auto", "exact", "sgd"))
        self.continue_when_idle = bool(continue_when_idle)

    def _init_state(self, dtype: torch.dtype) -> None:
        N, d = self.num_clients, self.dim
        self.w = torch.zeros(N, d, dtype=dtype)  # (N, d) local models w_k
        self.lam = torch.zeros(N, d, dtype=dtype)  # (N, d) duals (standard only)
        self.z_recv = torch.zeros(N, d, dtype=dtype)  # (N, d) last global model each client received
        self.seen = torch.zeros(N, dtype=torch.bool)  # client has received a model
        self.u = torch.zeros(N, d, dtype=dtype)  # (N, d) server's last model from each client
        self.heard = torch.zeros(N, dtype=torch.bool)

    def _solve(self, ids: torch.Tensor, data: Any, z: torch.Tensor, lam: torch.Tensor, *, steps: int,
               lr: float, generator: torch.Generator) -> torch.Tensor:
        """argmin_w f_k(w) + lam^T (w - z) + rho/2 ||w - z||^2 for each client, (M, d)."""
        exact = self.solver == "exact" or (self.solver == "auto" and data.kind == "least_squares")
        if exact:
            A, b = data.normal_equations()  # (M, d, d), (M, d)
            eye = torch.eye(self.dim, dtype=A.dtype)
            return torch.linalg.solve(A + self.rho * eye, (b + self.rho * z - lam).unsqueeze(-1)).squeeze(-1)
        start = torch.where(self.seen[ids, None], self.w[ids], z)
        result = local_sgd(data, start, steps=steps, lr=lr, generator=generator, batch_size=self.batch_size,
                           offset=lam, prox_center=z, prox_mu=self.rho)
        return start + result.delta

    def _dual(self, client_ids: torch.Tensor, data: Any) -> torch.Tensor:
        """Standard: the stored duals. Dual-free: ``-grad f_k(w_k)`` (0 before the first update)."""
        if self.variant == "standard":
            return self.lam[client_ids]
        grads = data.grads(self.w[client_ids], data.X, data.y, data.mask)  # (M, d) full local batch
        return torch.where(self.seen[client_ids, None], -grads, torch.zeros_like(grads))

    def local_updates(self, x: torch.Tensor, client_ids: torch.Tensor, data: Any, *, steps: int,
                      lr: float, generator: torch.Generator) -> torch.Tensor:
        self._require_setup()
        self.local_steps, self.local_lr = steps, lr
        z = (x.expand(len(client_ids), -1) if x.dim() == 1 else x).clone()  # (M, d) received (noisy) model
        lam = self._dual(client_ids, data)
        if self.variant == "standard":
            # lambda_k <- lambda_k + rho (w_k - z~)  (only once the client holds a w_k)
            lam = torch.where(self.seen[client_ids, None], lam + self.rho * (self.w[client_ids] - z), lam)
        w = self._solve(client_ids, data, z, lam, steps=steps, lr=lr, generator=generator)
        self.w[client_ids], self.lam[client_ids], self.z_recv[client_ids] = w, lam, z
        self.seen[client_ids] = True
        # standard: send u_k = w_k;  dual-free: u_k = w_k - grad f_k(w_k_old)/rho = w_k + lambda_k/rho
        u = w if self.variant == "standard" else w + lam / self.rho
        return u - z

    def idle_updates(self, client_ids: torch.Tensor, data: Any, *, steps: int, lr: float,
                     generator: torch.Generator) -> None:
        """Unselected clients keep solving with their last received model (no upload)."""
        if not self.continue_when_idle:
            return
        keep = self.seen[client_ids]
        if not keep.any():
            return
        ids = client_ids[keep]
        sub = data.select(keep)
        self.w[ids] = self._solve(ids, sub, self.z_recv[ids], self._dual(ids, sub), steps=steps, lr=lr,
                                  generator=generator)

    def aggregate(self, x: torch.Tensor, updates: Mapping[int, torch.Tensor],
                  num_samples: Mapping[int, int], round: int, *,
                  staleness: Mapping[int, int] | None = None) -> torch.Tensor:
        self._require_setup()
        ids, deltas, _ = stack_updates(x, updates, num_samples)
        if len(ids):
            self.u[ids] = x + deltas  # the server's reconstruction of u_k
            self.heard[ids] = True
        if not self.heard.any():
            self.last_weights = {}
            return x.clone()
        # z = (1/|heard|) sum_k u_k
        self._record(ids, torch.full((len(ids),), 1.0 / int(self.heard.sum()), dtype=x.dtype))
        return self.u[self.heard].mean(0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rho": self.rho, "variant": self.variant, "w": self.w.clone(),
                "lam": self.lam.clone(), "u": self.u.clone(), "heard": self.heard.clone()}
