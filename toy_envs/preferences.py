"""Synthetic preference data with a known Bradley–Terry reward over short token sequences.

Vocabulary: ``<pad>`` (0), ``<eos>`` (1), then ``n_tokens`` content tokens ``t0, t1, ...``. A prompt
is one token ``x ∈ {0..n_prompts−1}`` (encoded as a content token). Each (prompt, content token)
pair has a hidden quality ``w[x, v] ~ N(0, 1)``; the true reward of a response is its *mean*
token quality, scaled::

    r*(x, y) = scale · (1/|y|) Σ_t w[x, y_t]          (<eos> and padding excluded)
    P(y_a ≻ y_b | x) = σ(r*(x, y_a) − r*(x, y_b))      (Bradley–Terry)

Because the reward is a mean, long responses are not better, while a sequence log-probability
S = Σ_t log π(y_t) is lower for longer responses: lengths vary (``min_len``..``max_len`` content
tokens, then ``<eos>``), so summed and length-normalized scores rank pairs differently.

The reference policy is a :class:`lab.models.TabularPolicy` (one logit vector per prompt and
position) whose content logits are ``ref_alignment · w[x, v] + ref_noise · ε`` (an imperfect SFT
model: it agrees with the reward in part, and misranks some pairs), whose ``<eos>`` logit is
−∞ before ``min_len`` content tokens and ``eos_logit`` after, and which always stops by ``max_len``.
Pairs are two responses sampled from the reference for one prompt; the label is drawn from the
Bradley–Terry probability (``noisy_labels=True``) or given to the higher reward. ``pref_prob`` is
α_n = P(y_w ≻ y_l), the quantity of the idealized ranking accuracy.

Step-wise pairs (Step-DPO): a problem x has a correct chain of ``n_steps`` steps, each a block of
``step_len`` content tokens fixed by a seeded table. The state before step k is the problem plus the
correct steps 1..k−1 (left-padded with ``<pad>`` to one prompt length); the chosen response is the
correct step k, the rejected one a different block (the first erroneous step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lab.checks import check_int, check_nonneg, check_positive

PAD, EOS = 0, 1
NEG_INF = -30.0     # a logit low enough to never be sampled (finite, so gradients stay finite)


@dataclass
class PreferencePairs:
    """A batch of preference pairs; token tensors are (N, T) with ``<pad>`` after ``<eos>``."""

    prompts: torch.Tensor          # (N, P) long
    chosen: torch.Tensor           # (N, T) long
    chosen_mask: torch.Tensor      # (N, T) bool, response tokens incl. <eos>
    rejected: torch.Tensor         # (N, T) long
    rejected_mask: torch.Tensor    # (N, T) bool
    pref_prob: torch.Tensor        # (N,) α_n = P(y_w ≻ y_l) under the true reward
    chosen_reward: torch.Tensor    # (N,) true reward r*(x, y_w)
    rejected_reward: torch.Tensor  # (N,) true reward r*(x, y_l)

    def __len__(self) -> int:
        return self.prompts.shape[0]


class PreferenceTask:
    """Prompts, a hidden Bradley–Terry reward and an imperfect reference policy (module docstring).

    Args:
        n_prompts: number of distinct prompts.
        n_tokens: content tokens (the vocabulary is ``n_tokens + 2``).
        min_len, max_len: content tokens per response (then ``<eos>``, unless cut at ``max_len``).
        scale: reward scale (larger: more decisive preferences).
        ref_alignment: how much the reference's logits follow the hidden token quality.
        ref_noise: standard deviation of the reference's logit noise.
        eos_logit: the reference's ``<eos>`` logit once ``min_len`` tokens are out.
        seed: seed of the hidden qualities and the reference's noise (drawn on the CPU, so the task
            is the same on every device).
        device: where the task's tensors live (default CPU); samples land on the generator's device.
    """

    def __init__(self, n_prompts: int = 4, n_tokens: int = 6, min_len: int = 1, max_len: int = 4,
                 scale: float = 2.0, ref_alignment: float = 0.5, ref_noise: float = 1.0, eos_logit: float = 0.0,
                 seed: int = 0, device: torch.device | str | None = None):
        check_int("n_prompts", n_prompts, minimum=1)
        check_int("n_tokens", n_tokens, minimum=2)
        check_int("min_len", min_len, minimum=1)
        check_int("max_len", max_len, minimum=min_len)
        check_positive("scale", scale)
        check_nonneg("ref_noise", ref_noise)
        if n_prompts > n_tokens:
            raise ValueError(f"n_prompts ({n_prompts}) must be <= n_tokens ({n_tokens}): prompts are content tokens")
        self.n_prompts, self.n_tokens, self.min_len, self.max_len = n_prompts, n_tokens, min_len, max_len
        self.scale, self.ref_alignment, self.ref_noise = float(scale), float(ref_alignment), float(ref_noise)
        self.eos_logit = float(eos_logit)
        self.device = torch.device("cpu" if device is None else device)
        g = torch.Generator().manual_seed(seed)
        self.quality = torch.randn(n_prompts, n_tokens, generator=g, device="cpu").to(self.device)  # w[x, v]
        self._noise = torch.randn(n_prompts, max_len + 1, n_tokens, generator=g, device="cpu").to(self.device)
        self.vocab_size = n_tokens + 2
        self.prompt_len = 1
        self.max_new_tokens = max_len + 1

    # ---- the hidden reward ------------------------------------------------------------------
    def reward(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """r*(x, y) = scale · mean quality of the content tokens of each response (N,)."""
        x = prompts[:, 0].long() - 2
        content = responses >= 2                                                # (N, T)
        idx = (responses.long() - 2).clamp_min(0)
        w = self.quality[x[:, None].expand_as(idx), idx]                        # (N, T)
        total = torch.where(content, w, torch.zeros((), device=w.device)).sum(-1)
        return self.scale * total / content.sum(-1).clamp_min(1)

    # ---- the reference policy ---------------------------------------------------------------
    def reference_logits(self) -> torch.Tensor:
        """(C, T, V) logits of the reference table (C = vocabulary size, one row per prompt token)."""
        V, T = self.vocab_size, self.max_new_tokens
        logits = torch.full((V, T, V), NEG_INF, device=self.device)
        for x in range(self.n_prompts):
            content = self.ref_alignment * self.quality[x] + self.ref_noise * self._noise[x]   # (T, n_tokens)
            logits[x + 2, :, 2:] = content
            logits[x + 2, self.min_len:, EOS] = self.eos_logit
            logits[x + 2, self.max_len, :] = NEG_INF
            logits[x + 2, self.max_len, EOS] = 0.0                               # always stop by max_len
        return logits

    def reference_policy(self):
        """The frozen reference as a :class:`lab.models.TabularPolicy` (a fresh trainable copy each call)."""
        from lab.models.policy import TabularPolicy

        policy = TabularPolicy(self.vocab_size, self.prompt_len, self.max_new_tokens, device=self.device)
        with torch.no_grad():
            policy.logits.copy_(self.reference_logits())
        return policy

    # ---- data -------------------------------------------------------------------------------
    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 1) prompt tokens, uniform over the prompts (on the generator's device)."""
        return torch.randint(0, self.n_prompts, (n, 1), generator=generator, device=generator.device) + 2

    def sample_responses(self, prompts: torch.Tensor, generator: torch.Generator):
        """Responses of the reference policy: ``(tokens (N, T), mask (N, T) bool)``."""
        policy = self.reference_policy()
        gen = policy.generate(prompts, temperature=1.0, generator=generator, eos_id=EOS, pad_id=PAD)
        return gen.tokens, gen.mask

    def sample_pairs(self, n: int, generator: torch.Generator, *, noisy_labels: bool = True) -> PreferencePairs:
        """``n`` pairs of distinct reference responses, labelled by the Bradley–Terry reward."""
        check_int("n", n, minimum=1)
        prompts = self.sample_prompts(n, generator)
        a, mask_a = self.sample_responses(prompts, generator)
        b, mask_b = self.sample_responses(prompts, generator)
        same = (a == b).all(-1)
        for _ in range(20):                                                      # redraw identical pairs
            if not same.any():
                break
            b2, mask_b2 = self.sample_responses(prompts, generator)
            b, mask_b = torch.where(same[:, None], b2, b), torch.where(same[:, None], mask_b2, mask_b)
            same = (a == b).all(-1)
        r_a, r_b = self.reward(prompts, a), self.reward(prompts, b)
        p_a = torch.sigmoid(r_a - r_b)                                           # P(a ≻ b)
        a_wins = torch.rand(n, generator=generator, device=generator.device) < p_a if noisy_labels else r_a >= r_b
        pick = a_wins[:, None]
        return PreferencePairs(
            prompts=prompts,
            chosen=torch.where(pick, a, b), chosen_mask=torch.where(pick, mask_a, mask_b),
            rejected=torch.where(pick, b, a), rejected_mask=torch.where(pick, mask_b, mask_a),
            pref_prob=torch.where(a_wins, p_a, 1.0 - p_a),
            chosen_reward=torch.where(a_wins, r_a, r_b), rejected_reward=torch.where(a_wins, r_b, r_a))


class StepTask:
    """Problems with a correct chain of steps; step-wise pairs for Step-DPO (module docstring).

    Args:
        n_problems: number of problems.
        n_tokens: content tokens.
        n_steps: K steps per solution.
        step_len: content tokens per step.
        seed: seed of the correct steps (drawn on the CPU, so the task is the same on every device).
        device: where the task's tensors live (default CPU); samples land on the generator's device.
    """

    def __init__(self, n_problems: int = 4, n_tokens: int = 4, n_steps: int = 3, step_len: int = 2, seed: int = 0,
                 device: torch.device | str | None = None):
        check_int("n_problems", n_problems, minimum=1)
        check_int("n_tokens", n_tokens, minimum=2)
        check_int("n_steps", n_steps, minimum=1)
        check_int("step_len", step_len, minimum=1)
        self.n_problems, self.n_tokens, self.n_steps, self.step_len = n_problems, n_tokens, n_steps, step_len
        self.device = torch.device("cpu" if device is None else device)
        g = torch.Generator().manual_seed(seed)
        self.solutions = torch.randint(2, n_tokens + 2, (n_problems, n_steps, step_len), generator=g,
                                       device="cpu").to(self.device)                      # (X, K, s)
        self.vocab_size = max(n_tokens + 2, n_problems + 2)
        self.prompt_len = 1 + (n_steps - 1) * step_len
        self.max_new_tokens = step_len

    def state(self, problem: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Prompts (N, P): ``<pad>``… ⊕ problem token ⊕ the given steps (N, k−1, step_len), left-padded."""
        n, done = problem.shape[0], steps.shape[1] * self.step_len
        pad = torch.full((n, self.prompt_len - 1 - done), PAD, dtype=torch.long, device=problem.device)
        return torch.cat([pad, problem[:, None] + 2, steps.reshape(n, done)], dim=1)

    def step_pairs(self, n: int, generator: torch.Generator) -> PreferencePairs:
        """``n`` pairs (state before step k, correct step k, a wrong step k) with uniform problem and k."""
        check_int("n", n, minimum=1)
        dev = generator.device
        problem = torch.randint(0, self.n_problems, (n,), generator=generator, device=dev)
        k = torch.randint(0, self.n_steps, (n,), generator=generator, device=dev)     # 0-based step index
        prompts = torch.stack([self.state(problem[i:i + 1], self.solutions[problem[i], :k[i]][None])[0]
                               for i in range(n)])
        chosen = self.solutions[problem, k]                                      # (n, s)
        wrong = torch.randint(2, self.n_tokens + 2, chosen.shape, generator=generator, device=dev)
        same = (wrong == chosen).all(-1)
        wrong[same, 0] = (chosen[same, 0] - 2 + 1) % self.n_tokens + 2           # make it differ
        ones = torch.ones(n, self.step_len, dtype=torch.bool, device=dev)
        return PreferencePairs(prompts=prompts, chosen=chosen, chosen_mask=ones, rejected=wrong,
                               rejected_mask=ones.clone(), pref_prob=torch.ones(n, device=dev),
                               chosen_reward=torch.ones(n, device=dev), rejected_reward=torch.zeros(n, device=dev))

    @torch.no_grad()
    def chain_accuracy(self, policy) -> tuple[float, float]:
        """Greedy solving from each problem: ``(share of correct steps, share of fully correct chains)``.

        A step after the first mistake counts as wrong (the state is off the correct chain).
        """
        dev = self.device
        problems = torch.arange(self.n_problems, device=dev)
        steps = torch.zeros(self.n_problems, 0, self.step_len, dtype=torch.long, device=dev)
        on_track = torch.ones(self.n_problems, dtype=torch.bool, device=dev)
        correct_steps = 0
        for k in range(self.n_steps):
            gen = policy.generate(self.state(problems, steps), self.step_len, temperature=0.0)
            ok = (gen.tokens == self.solutions[:, k]).all(-1) & on_track
            correct_steps += int(ok.sum())
            on_track = ok
            steps = torch.cat([steps, gen.tokens[:, None]], dim=1)
        return correct_steps / (self.n_problems * self.n_steps), float(on_track.float().mean())


__all__ = ["PAD", "EOS", "PreferencePairs", "PreferenceTask", "StepTask"]
