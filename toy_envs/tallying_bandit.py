"""Weighted Tallying Bandit (WTB): the environment, and the modified successive elimination that solves it.

Paper: "Weighted Tallying Bandits: Overcoming Intractability via Repeated Exposure Optimality",
Malik, Igoe, Li, Singh, ICML 2023, arXiv 2305.02955.

The model: K arms, horizon T, memory m, weights w_1..w_m >= 0 (here w_j = lambda^(j-1)). The
weighted tally of arm a at time t counts its recent plays, the recent ones more:

    tau_t(a) = sum_{j=1..m} w_j 1[a_{t-j} = a]        (0 <= tau <= W = sum_j w_j)

where a_t is the arm played at time t, and the loss of the played arm depends on it:
l_t = f_{a_t}(tau_t(a_t)) + N(0, noise^2). Two families, with a base loss mu_a and a gain g_a per
arm: "habituation" f_a(tau) = mu_a - g_a min(tau / W, 1) (an arm gets better the more it was just
played; the best *saturated* arm a* = argmin(mu_a - g_a) is not the best fresh arm argmin mu_a,
so an interleaving learner is misled); "boredom" f_a(tau) = mu_a + g_a tau / W (repetition hurts).
Repeated Exposure Optimality (REO) holds for habituation: always playing a* beats every sequence.
Complete policy regret (CPR) compares with the best fixed sequence evaluated on its *own* history;
under REO that is "always a*", whose losses :meth:`WeightedTallyingBanditEnv.comparator_losses` gives.

The algorithm, modified successive elimination (the lab's reconstruction of the paper's
algorithm, [unverified] against its box): only an upper bound M >= m is known. Active set A = all
arms; in phase l each active arm is played for M + n_l consecutive rounds (n_l = 2^l); the first
M losses are thrown away (the tally is still filling up) and the other n_l, all at the saturated
tally W, enter the arm's mean. After the phase every arm with LCB_a > min_b UCB_b is eliminated
(losses; radius sigma sqrt(2 log(2 K T / delta) / N_a), N_a the kept observations of arm a, delta
the confidence level, sigma = the sub-Gaussian scale of the observed losses: 1/2 for any loss in
[0, 1], the noise std when the noise is Gaussian). Once one arm is left it is played to the end.
Intuition: an arm must be judged on the losses it gives once it is habitual, so each arm is
played in long blocks and only the saturated part of a block is believed.

Where it departs from successive elimination: standard SE (``interleave=True``) plays the active
arms round-robin and discards nothing: it only ever sees fresh-arm losses and keeps the wrong
arm. The modified SE plays blocks and throws away the first M losses of each.

Choices:
- Weights decay geometrically, w_j = lambda^(j-1) (``decay``); the noise is Gaussian.
- Default arms mu_a = 0.5 + 0.1 a, g_a = 0.15 a: the last arm is a* while the first is best
  when fresh.
- Block lengths n_l = 2^l, the radius above with ``sigma`` = 1/2 by default; the comparator of
  CPR is always-a*, a* being the arm with the smallest total loss of repeated play over the
  horizon (:meth:`WeightedTallyingBanditEnv.best_fixed_arm`).
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class WeightedTallyingBanditEnv(gym.Env):
    """Weighted Tallying Bandit.

    ## Description
    A K-armed bandit whose loss for an arm depends on its weighted count of plays in the last m
    rounds (the tally). Reward = minus the loss.

    ## Action Space
    ``Discrete(n_arms)``: the arm to play.

    ## Observation Space
    ``Discrete(1)`` (pure bandit feedback, always 0); with ``expose_history=True``,
    ``MultiDiscrete([n_arms + 1] * memory)``: the last m arms, most recent first (n_arms = none yet).

    ## Rewards
    ``-(f_a(tau_t(a)) + noise)`` with f of the chosen ``family`` (see the module docstring).

    ## Starting State
    Empty history: every tally is 0.

    ## Episode End
    Never terminates; truncated after ``horizon`` rounds.

    ## Arguments
    n_arms (K), horizon (T), memory (m), decay (lambda, w_j = lambda^(j-1)), family
    ("habituation" | "boredom"), noise (std of the Gaussian loss noise), mu and gains (per-arm
    base loss and gain; default mu_a = 0.5 + 0.1 a, g_a = 0.15 a, so the last arm is a* while the
    first is best when fresh), expose_history.
    """

    metadata = {"render_modes": []}

    def __init__(self, n_arms: int = 3, horizon: int = 1000, memory: int = 3, decay: float = 0.9,
                 family: str = "habituation", noise: float = 0.1, mu: tuple[float, ...] | None = None,
                 gains: tuple[float, ...] | None = None, expose_history: bool = False):
        self.n_arms = _check_int("n_arms", n_arms, 2)
        self.horizon = _check_int("horizon", horizon, 1)
        self.memory = _check_int("memory", memory, 1)
        if not 0.0 < float(decay) <= 1.0:
            raise ValueError(f"decay must lie in (0, 1], got {decay}")
        if family not in ("habituation", "boredom"):
            raise ValueError(f"family must be 'habituation' or 'boredom', got {family!r}")
        if not float(noise) >= 0.0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.family, self.noise = family, float(noise)
        self.weights = float(decay) ** np.arange(self.memory)  # (m,) w_j
        self.total_weight = float(self.weights.sum())  # W
        arms = np.arange(self.n_arms)
        self.mu = np.asarray(mu if mu is not None else 0.5 + 0.1 * arms, dtype=np.float64)
        self.gains = np.asarray(gains if gains is not None else 0.15 * arms, dtype=np.float64)
        for name, values in (("mu", self.mu), ("gains", self.gains)):
            if values.shape != (self.n_arms,):
                raise ValueError(f"{name} must have {self.n_arms} entries, got {values.shape}")
        self.action_space = spaces.Discrete(self.n_arms)
        self.expose_history = bool(expose_history)
        self.observation_space = (spaces.MultiDiscrete([self.n_arms + 1] * self.memory) if self.expose_history
                                  else spaces.Discrete(1))
        self.history: list[int] = []
        self.t = 0

    # ---- the model -------------------------------------------------------------------------
    def tallies(self, history: list[int] | None = None) -> np.ndarray:
        """tau(a) = sum_j w_j 1[a_{t-j} = a] for every arm, from ``history`` (default: the env's)."""
        history = self.history if history is None else history
        tau = np.zeros(self.n_arms)
        for j, arm in enumerate(reversed(history[-self.memory:])):  # j = 0 is the last action
            tau[arm] += self.weights[j]
        return tau

    def mean_loss(self, arm: int, tally: float) -> float:
        """f_a(tau) without noise."""
        level = min(tally / self.total_weight, 1.0)
        if self.family == "habituation":
            return float(self.mu[arm] - self.gains[arm] * level)
        return float(self.mu[arm] + self.gains[arm] * level)

    def comparator_losses(self, arm: int, horizon: int | None = None) -> np.ndarray:
        """Mean losses of always playing ``arm`` from an empty history, (horizon,)."""
        horizon = self.horizon if horizon is None else horizon
        fill = np.cumsum(np.concatenate([[0.0], self.weights]))  # tally after j plays
        return np.array([self.mean_loss(arm, fill[min(t, self.memory)]) for t in range(horizon)])

    def best_fixed_arm(self) -> int:
        """a* = the arm whose repeated play has the smallest total loss over the horizon."""
        return int(np.argmin([self.comparator_losses(a).sum() for a in range(self.n_arms)]))

    # ---- gymnasium API ---------------------------------------------------------------------
    def _obs(self):
        if not self.expose_history:
            return 0
        last = list(reversed(self.history[-self.memory:]))
        return np.array(last + [self.n_arms] * (self.memory - len(last)), dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.history, self.t = [], 0
        return self._obs(), {"tally": self.tallies().tolist()}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm in 0..{self.n_arms - 1}, got {action!r}")
        arm = int(action)
        tally = self.tallies()
        mean = self.mean_loss(arm, tally[arm])
        loss = mean + self.noise * float(self.np_random.standard_normal())
        self.history.append(arm)
        self.t += 1
        info = {"tally": tally.tolist(), "loss_mean": mean}
        return self._obs(), -loss, False, self.t >= self.horizon, info


class SuccessiveElimination:
    """Modified successive elimination for tallying bandits (``interleave=True``: standard SE).

    Args:
        n_arms: K.
        horizon: T (enters the confidence radius).
        max_memory: M, the known upper bound on the memory m (warm-up rounds discarded per block).
        delta: confidence level of the elimination test.
        sigma: sub-Gaussian scale of the observed losses (1/2 for losses in [0, 1]).
        interleave: standard SE: active arms round-robin, nothing discarded.
    """

    def __init__(self, n_arms: int, horizon: int, *, max_memory: int = 3, delta: float = 0.05,
                 sigma: float = 0.5, interleave: bool = False):
        self.n_arms = _check_int("n_arms", n_arms, 1)
        self.horizon = _check_int("horizon", horizon, 1)
        self.max_memory = _check_int("max_memory", max_memory, 0)
        if not 0.0 < float(delta) < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {delta}")
        if not float(sigma) > 0.0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.delta, self.sigma, self.interleave = float(delta), float(sigma), bool(interleave)
        self.active = list(range(self.n_arms))
        self.sums = np.zeros(self.n_arms)
        self.counts = np.zeros(self.n_arms)
        self.phase = 0
        self._queue: list[tuple[int, bool]] = []  # (arm, keep the observation?)

    def _plan_phase(self) -> None:
        self.phase += 1
        if self.interleave:
            self._queue = [(a, True) for a in self.active]
            return
        block = 2 ** self.phase  # n_l
        for arm in self.active:
            self._queue += [(arm, False)] * self.max_memory + [(arm, True)] * block

    def radius(self, arm: int) -> float:
        """sigma sqrt(2 log(2 K T / delta) / N_a) (inf before any kept observation)."""
        if self.counts[arm] == 0:
            return math.inf
        return self.sigma * math.sqrt(2 * math.log(2 * self.n_arms * self.horizon / self.delta) / self.counts[arm])

    def _eliminate(self) -> None:
        means = {a: self.sums[a] / max(self.counts[a], 1) for a in self.active}
        best_ucb = min(means[a] + self.radius(a) for a in self.active)
        self.active = [a for a in self.active if means[a] - self.radius(a) <= best_ucb]

    def act(self) -> int:
        """The next arm to play."""
        if len(self.active) == 1:
            return self.active[0]
        if not self._queue:
            self._plan_phase()
        return self._queue[0][0]

    def update(self, arm: int, loss: float) -> None:
        """Record the loss of the arm returned by :meth:`act`."""
        if len(self.active) == 1 or not self._queue:
            return
        planned, keep = self._queue.pop(0)
        if planned != arm:
            raise ValueError(f"arm must be the one act() returned ({planned}), got {arm}")
        if keep:
            self.sums[arm] += loss
            self.counts[arm] += 1
        if not self._queue:
            self._eliminate()


def run_agent(env: WeightedTallyingBanditEnv, agent: SuccessiveElimination, *, seed: int | None = None) -> dict:
    """Play one episode; returns per-round mean losses, CPR against always-a*, actions."""
    env.reset(seed=seed)
    losses, actions = [], []
    for _ in range(env.horizon):
        arm = agent.act()
        _, reward, _, truncated, info = env.step(arm)
        agent.update(arm, -reward)
        losses.append(info["loss_mean"])
        actions.append(arm)
        if truncated:
            break
    losses = np.asarray(losses)
    comparator = env.comparator_losses(env.best_fixed_arm(), len(losses))
    return {"loss_mean": losses, "cpr": np.cumsum(losses - comparator), "actions": np.asarray(actions)}
