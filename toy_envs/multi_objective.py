"""Token tasks with several rewards: a conflicting multi-objective task and a proxy-reward task.

Both follow the batched API of :mod:`toy_envs.token_tasks` (``sample_prompts``, ``reward``,
``correct``) and add ``objectives(prompts, responses) -> (n, K)``: one column per reward, each
"higher is better". Tokens 0/1 are ``<pad>``/``<eos>``; the *content* of a response is what comes
before its first ``<eos>`` (at most ``length`` tokens).

:class:`MultiObjectiveTask` — "repeat the digit": the prompt is ``[d, mode]``; the answer is the
digit d written ``length`` times. With ``k`` the content tokens that match d (the wildcard ``!``
also matches) and ``n`` the content length (``L = length``):

    correctness  (k / L) ** power            power > 1 bends the front inward (non-convex)
    brevity      1 − n / L
    clean        1 − 1[``!`` in the content]   (third objective, ``n_objectives=3``)

Correctness wants every slot, brevity wants none, and the wildcard is a shortcut the third
objective forbids. The deterministic responses "d written m times" give the front
{((m/L)^power, 1 − m/L)}: with power = 2 every interior point lies below the chord between the two
ends, so no fixed linear weights ever prefer it. ``mode`` (``c`` or ``b``) says which objective the
prompt's user cares for; :meth:`MultiObjectiveTask.preferred_objectives` scores the response that
user prefers (PRO's training signal), and ``prompt_features`` one-hot encodes the mode.

:class:`ProxyRewardTask` — over-optimization of a proxy: each of L slots holds the answer digit d,
the keyword ``*`` or anything else. Two component "reward models" score it,

    r_keyword = n_* / L          (a style RM: keywords help, but only up to a proxy point θ)
    r_answer  = n_d / L          (a content RM)

and the hidden true reward (what a human would rate) is

    true = n_d / L + min(n_*/L, θ) − penalty · max(n_*/L − θ, 0).

The proxy ``reward`` = keyword_scale·r_keyword + r_answer pays more for a keyword than for an answer
token, so maximizing it fills every slot with ``*`` and the true reward collapses.
"""
from __future__ import annotations

import numpy as np
import torch

from toy_envs.token_tasks import TokenTask, TokenTaskEnv

DIGIT0 = 2


def _content(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(n, T) bool: positions before the first ``<eos>``."""
    is_eos = responses == eos_id
    return torch.cumsum(is_eos.int(), dim=-1) == 0


class MultiObjectiveTask(TokenTask):
    """Repeat a digit ``length`` times, against brevity (and a forbidden wildcard).

    Args:
        n_digits: how many different digits prompts use (2).
        length: L, the answer length and response budget (4).
        power: exponent of the correctness reward (2.0; 1.0 gives a linear, convex front).
        n_objectives: 2 (correctness, brevity) or 3 (+ clean: no wildcard).
    """

    def __init__(self, n_digits: int = 2, length: int = 4, power: float = 2.0, n_objectives: int = 2):
        if isinstance(n_digits, bool) or not isinstance(n_digits, int) or not 1 <= n_digits <= 10:
            raise ValueError(f"n_digits must be an int in [1, 10], got {n_digits!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if not isinstance(power, (int, float)) or isinstance(power, bool) or not power > 0:
            raise ValueError(f"power must be a number > 0, got {power!r}")
        if n_objectives not in (2, 3):
            raise ValueError(f"n_objectives must be 2 or 3, got {n_objectives!r}")
        self.n_digits, self.length, self.power, self.n_objectives = n_digits, length, float(power), n_objectives
        self.vocab = ("<pad>", "<eos>", *"0123456789"[:n_digits], "!", "c", "b")
        self.wildcard = DIGIT0 + n_digits
        self.modes = (self.wildcard + 1, self.wildcard + 2)
        self.prompt_len = 2
        self.max_new_tokens = length + 1
        self.objective_names = ("correctness", "brevity", "clean")[:n_objectives]

    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        dev = generator.device                                       # prompts live with the generator
        digit = torch.randint(0, self.n_digits, (n,), generator=generator, device=dev) + DIGIT0
        mode = torch.tensor(self.modes, device=dev)[torch.randint(0, 2, (n,), generator=generator, device=dev)]
        return torch.stack([digit, mode], -1)

    def objectives(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(n, K) rewards: correctness, brevity (, clean)."""
        prompts, responses = self.check_batch(prompts, responses)
        L = self.length
        content = _content(responses, self.eos_id)[:, :L]                          # (n, ≤L)
        resp = responses[:, :L]
        hit = ((resp == prompts[:, :1]) | (resp == self.wildcard)) & content
        correctness = (hit.sum(-1).float() / L) ** self.power
        brevity = 1.0 - content.sum(-1).float() / L
        cols = [correctness, brevity]
        if self.n_objectives == 3:
            cols.append(1.0 - ((resp == self.wildcard) & content).any(-1).float())
        return torch.stack(cols, -1)

    def reward(self, prompts, responses, generator=None) -> torch.Tensor:
        """Correctness alone (the task's scalar reward for the single-objective loops)."""
        return self.objectives(prompts, responses)[:, 0]

    def correct(self, prompts, responses) -> torch.Tensor:
        return self.objectives(prompts, responses)[:, 0] >= 1.0

    def front(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The objective vectors of the deterministic responses "d written m times", m = 0..L (L+1, K)."""
        m = torch.arange(self.length + 1, dtype=torch.float32, device=device)
        cols = [(m / self.length) ** self.power, 1 - m / self.length]
        if self.n_objectives == 3:
            cols.append(torch.ones_like(m))
        return torch.stack(cols, -1)

    def prompt_features(self, prompts: torch.Tensor) -> torch.Tensor:
        """(n, 2) one-hot of the prompt's mode (``c``: wants correctness, ``b``: wants brevity)."""
        return torch.stack([(prompts[:, 1] == m).float() for m in self.modes], -1)

    def preferred_objectives(self, prompts: torch.Tensor) -> torch.Tensor:
        """(n, K) objectives of the response the prompt's user prefers: the full answer for ``c``,
        the empty answer for ``b``."""
        wants_answer = prompts[:, 1] == self.modes[0]
        front = self.front(prompts.device)
        return torch.where(wants_answer[:, None], front[-1], front[0])


class ProxyRewardTask(TokenTask):
    """Fill L slots with the answer digit; a keyword RM pays more but is only useful up to θ.

    Args:
        n_digits: digits used by prompts (2).
        length: L slots (4).
        threshold: θ, the keyword density a human still likes (0.25).
        penalty: true-reward loss per unit of keyword density past θ (2.0).
        keyword_scale: what the proxy pays per keyword relative to an answer token (1.5).
    """

    def __init__(self, n_digits: int = 2, length: int = 4, threshold: float = 0.25, penalty: float = 2.0,
                 keyword_scale: float = 1.5):
        if isinstance(n_digits, bool) or not isinstance(n_digits, int) or not 1 <= n_digits <= 10:
            raise ValueError(f"n_digits must be an int in [1, 10], got {n_digits!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
        if penalty < 0 or keyword_scale < 0:
            raise ValueError("penalty and keyword_scale must be >= 0")
        self.n_digits, self.length = n_digits, length
        self.threshold, self.penalty, self.keyword_scale = float(threshold), float(penalty), float(keyword_scale)
        self.vocab = ("<pad>", "<eos>", *"0123456789"[:n_digits], "*")
        self.keyword = DIGIT0 + n_digits
        self.prompt_len = 1
        self.max_new_tokens = length
        self.objective_names = ("keyword_rm", "answer_rm")

    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.n_digits, (n, 1), generator=generator, device=generator.device) + DIGIT0

    def objectives(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(n, 2) component RM scores: keyword density, answer density."""
        prompts, responses = self.check_batch(prompts, responses)
        content = _content(responses, self.eos_id)[:, :self.length]
        resp = responses[:, :self.length]
        keyword = ((resp == self.keyword) & content).sum(-1).float() / self.length
        answer = ((resp == prompts[:, :1]) & content).sum(-1).float() / self.length
        return torch.stack([keyword, answer], -1)

    def true_reward(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(n,) the hidden reward: answer density + keywords up to θ − penalty past θ."""
        kw, ans = self.objectives(prompts, responses).unbind(-1)
        return ans + kw.clamp(max=self.threshold) - self.penalty * (kw - self.threshold).clamp(min=0.0)

    def reward(self, prompts, responses, generator=None) -> torch.Tensor:
        """The proxy: keyword_scale · r_keyword + r_answer."""
        kw, ans = self.objectives(prompts, responses).unbind(-1)
        return self.keyword_scale * kw + ans

    def correct(self, prompts, responses) -> torch.Tensor:
        return self.objectives(prompts, responses)[:, 1] >= 1.0


class MultiObjectiveEnv(TokenTaskEnv):
    """Repeat a digit, one token per step, scored on conflicting objectives.

    ## Description
    The prompt is ``[d, mode]``; writing d more often raises correctness, writing less raises
    brevity, and the wildcard ``!`` counts as d but breaks the "clean" objective.

    ## Action Space
    ``Discrete(V)``: ``<pad> <eos>``, the digits, ``!``, ``c``, ``b``.

    ## Observation Space
    ``MultiDiscrete([V] * (2 + length + 1))``: prompt then the response so far, ``<pad>``-filled.

    ## Rewards
    0 until the end; then Σ_k w_k r_k of the objectives (``weights``, default equal);
    ``info["objectives"]`` holds the vector.

    ## Starting State
    Digit and mode uniform, drawn from ``self.np_random``.

    ## Episode End
    After ``<eos>`` or ``length + 1`` tokens.

    ## Arguments
    ``n_digits`` (2), ``length`` (4), ``power`` (2.0), ``n_objectives`` (2), ``weights`` (None = equal).
    """

    def __init__(self, n_digits: int = 2, length: int = 4, power: float = 2.0, n_objectives: int = 2,
                 weights: tuple[float, ...] | None = None, render_mode: str | None = None):
        super().__init__(MultiObjectiveTask(n_digits, length, power, n_objectives), render_mode)
        w = np.full(n_objectives, 1.0 / n_objectives) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (n_objectives,) or (w < 0).any():
            raise ValueError(f"weights must be {n_objectives} non-negative numbers, got {weights!r}")
        self.weights = w

    def step(self, action):
        obs, _, done, truncated, info = super().step(action)
        reward = 0.0
        if done:
            response = torch.tensor([self._response])
            vector = self.task.objectives(self._prompt, response)[0].numpy()
            info["objectives"] = vector.tolist()
            reward = float(vector @ self.weights)
        return obs, reward, done, truncated, info
