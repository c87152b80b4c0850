"""Token-level tasks with verifiable rewards: the shared base, the gymnasium wrapper, the task table.

A *task* is a tiny language problem over a small vocabulary. Token 0 is ``<pad>`` and token 1 is
``<eos>`` in every task. It has two faces:

- a batched API for fast group rollouts (what ``lab.rl.rollout`` uses)::

      task = make_task("arithmetic", difficulty=1)
      prompts = task.sample_prompts(32, generator)          # (32, P) long, fixed length P
      rewards = task.reward(prompts, responses, generator)  # (32,) float, responses (32, T) long
      task.correct(prompts, responses)                      # (32,) bool, exact answers

  A response ends at its first ``<eos>`` (which belongs to it) or after ``max_new_tokens``; tokens
  after the end are ignored.
- a gymnasium environment (:class:`TokenTaskEnv`): one token per step, reward at the end.

Sequence tasks (arithmetic, copy/reverse) have a target ``y* = answer tokens + <eos>``; the reward is
``1[y_{1:|y*|} = y*]`` or, with ``partial_credit``, the fraction of target positions matched,
``(1/|y*|) Σ_k 1[y_k = y*_k]`` (dense enough for a randomly initialised policy to learn from).
``difficulty`` is an integer knob of each task (operand digits, string length, arm gap) used by
curricula.
"""
from __future__ import annotations

import importlib
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

PAD_ID = 0
EOS_ID = 1


class TokenTask:
    """Base class. Subclasses set ``vocab``, ``prompt_len``, ``max_new_tokens`` and implement
    :meth:`sample_prompts` and :meth:`reward` (sequence tasks implement :meth:`targets` instead)."""

    vocab: tuple[str, ...] = ("<pad>", "<eos>")
    prompt_len: int = 1
    max_new_tokens: int = 1
    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    partial_credit: bool = True

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ---- the batched API ------------------------------------------------------------------
    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, prompt_len) long prompts."""
        raise NotImplementedError

    def targets(self, prompts: torch.Tensor) -> list[list[int]]:
        """The correct response (ending in ``<eos>``) of each prompt (sequence tasks)."""
        raise NotImplementedError

    def reward(self, prompts: torch.Tensor, responses: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) rewards in [0, 1] of ``responses`` (n, T) to ``prompts`` (n, P).

        ``generator`` drives stochastic rewards (the bandit); deterministic tasks ignore it.
        """
        matched, length = self._match(prompts, responses)
        if self.partial_credit:
            return matched.sum(-1).float() / length.float()
        return (matched.sum(-1) == length).float()

    def correct(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the response is exactly the target."""
        matched, length = self._match(prompts, responses)
        return matched.sum(-1) == length

    def _match(self, prompts: torch.Tensor, responses: torch.Tensor):
        prompts, responses = self.check_batch(prompts, responses)
        targets = self.targets(prompts)
        width = max(len(t) for t in targets)
        target = torch.tensor([t + [-1] * (width - len(t)) for t in targets], dtype=torch.long,
                              device=responses.device).reshape(len(targets), width)
        resp = torch.full_like(target, self.pad_id)
        k = min(width, responses.shape[1])
        resp[:, :k] = responses[:, :k]
        length = (target >= 0).sum(-1)
        return (resp == target) & (target >= 0), length                  # (n, width), (n,)

    def check_batch(self, prompts: Any, responses: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (n, P) and responses (n, T) long tensors with the same n, tokens in the vocab."""
        for name, value in (("prompts", prompts), ("responses", responses)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() != 2 or value.is_floating_point():
                raise ValueError(f"{name} must be a 2-D integer tensor, got {value.dtype} {tuple(value.shape)}")
            if value.numel() and (value.min() < 0 or value.max() >= self.vocab_size):
                raise ValueError(f"{name} has tokens outside [0, {self.vocab_size})")
        if prompts.shape[0] != responses.shape[0]:
            raise ValueError(f"prompts has {prompts.shape[0]} rows, responses has {responses.shape[0]}")
        return prompts.long(), responses.long()

    def decode(self, tokens: torch.Tensor | list[int]) -> str:
        """Readable text of a token sequence (``<pad>`` skipped)."""
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return "".join(self.vocab[i] for i in ids if i != self.pad_id)

    def response_lengths(self, responses: torch.Tensor) -> torch.Tensor:
        """(n,) lengths: up to and including the first ``<eos>``, else the full width."""
        is_eos = responses == self.eos_id
        first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1,
                            torch.full((responses.shape[0],), responses.shape[1], device=responses.device))
        return first


class TokenTaskEnv(gymnasium.Env):
    """A :class:`TokenTask` as a gymnasium environment (one token per step, reward at the end).

    Subclasses build their task in ``__init__`` and call ``super().__init__(task)``.

    ## Observation Space
    ``MultiDiscrete([V] * (P + T))``: the prompt followed by the response so far, ``<pad>``-filled.
    ## Action Space
    ``Discrete(V)``: the next token.
    ## Episode End
    Terminates when the agent emits ``<eos>`` or has emitted ``max_new_tokens`` tokens.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, task: TokenTask, render_mode: str | None = None):
        self.task = task
        self.render_mode = render_mode
        width = task.prompt_len + task.max_new_tokens
        self.observation_space = spaces.MultiDiscrete(np.full(width, task.vocab_size, dtype=np.int64))
        self.action_space = spaces.Discrete(task.vocab_size)
        self._prompt = torch.zeros(1, task.prompt_len, dtype=torch.long)
        self._response: list[int] = []

    def _obs(self) -> np.ndarray:
        obs = np.full(self.observation_space.shape, self.task.pad_id, dtype=np.int64)
        obs[:self.task.prompt_len] = self._prompt[0].numpy()
        obs[self.task.prompt_len:self.task.prompt_len + len(self._response)] = self._response
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        generator = torch.Generator().manual_seed(int(self.np_random.integers(2 ** 62)))
        self._prompt = self.task.sample_prompts(1, generator)
        self._response = []
        return self._obs(), {"prompt": self.task.decode(self._prompt[0])}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be a token id in [0, {self.task.vocab_size}), got {action!r}")
        self._response.append(int(action))
        done = int(action) == self.task.eos_id or len(self._response) >= self.task.max_new_tokens
        reward, info = 0.0, {}
        if done:
            response = torch.tensor([self._response])
            reward = float(self.task.reward(self._prompt, response)[0])
            info = {"correct": bool(self.task.correct(self._prompt, response)[0])}
        return self._obs(), reward, done, False, info

    def render(self):
        if self.render_mode == "ansi":
            return f"{self.task.decode(self._prompt[0])}{self.task.decode(self._response)}"
        return None


TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "arithmetic": ("toy_envs.arithmetic:ArithmeticTask", {}),
    "copy": ("toy_envs.strings:StringTask", {"mode": "copy"}),
    "reverse": ("toy_envs.strings:StringTask", {"mode": "reverse"}),
    "token_bandit": ("toy_envs.token_bandit:TokenBanditTask", {}),
}
"""Task name -> ("module:Class", default kwargs), for experiments that pick a task by name."""


def make_task(name: str, **kwargs: Any) -> TokenTask:
    """Build task ``name`` (one of :data:`TASKS`) with keyword arguments."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    path, defaults = TASKS[name]
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)(**{**defaults, **kwargs})
