"""Copy or reverse a short string, with partial credit: ``"Rabc="`` -> ``"cba<eos>"``.

Vocabulary: ``<pad> <eos> C R =`` and ``alphabet`` letters ``a, b, ...``. A prompt is an operation
token (``C`` copy, ``R`` reverse), ``difficulty`` letters drawn uniformly, and ``=``; the target is
the letters copied or reversed, then ``<eos>``. Reward: the fraction of target positions right
(partial credit, default) or exact match. ``mode="mixed"`` draws the operation per prompt, so the
policy must read it.
"""
from __future__ import annotations

import torch

from toy_envs.token_tasks import TokenTask, TokenTaskEnv

COPY, REVERSE, EQUALS, LETTER0 = 2, 3, 4, 5
MODES = ("copy", "reverse", "mixed")


class StringTask(TokenTask):
    """Copy / reverse ``difficulty`` letters from an ``alphabet``-letter alphabet.

    Args:
        mode: ``"copy"``, ``"reverse"`` or ``"mixed"``.
        difficulty: string length (>= 1).
        alphabet: number of letters (2..26).
        partial_credit: reward = fraction of target tokens right (else exact match only).
        slack: response positions beyond the answer and its ``<eos>`` (the budget is
            ``difficulty + 1 + slack``): room to ramble, for length effects such as DAPO's
            overlong shaping. Tokens after a missing ``<eos>`` never score.
    """

    def __init__(self, mode: str = "reverse", difficulty: int = 3, alphabet: int = 4,
                 partial_credit: bool = True, slack: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 1:
            raise ValueError(f"difficulty must be an int >= 1 (string length), got {difficulty!r}")
        if isinstance(alphabet, bool) or not isinstance(alphabet, int) or not 2 <= alphabet <= 26:
            raise ValueError(f"alphabet must be an int in [2, 26], got {alphabet!r}")
        self.mode, self.difficulty, self.alphabet = mode, difficulty, alphabet
        self.partial_credit = bool(partial_credit)
        self.vocab = ("<pad>", "<eos>", "C", "R", "=", *"abcdefghijklmnopqrstuvwxyz"[:alphabet])
        self.prompt_len = difficulty + 2
        if isinstance(slack, bool) or not isinstance(slack, int) or slack < 0:
            raise ValueError(f"slack must be an int >= 0 (extra response positions), got {slack!r}")
        self.slack = slack
        self.max_new_tokens = difficulty + 1 + slack

    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        dev = generator.device                                       # prompts live with the generator
        letters = torch.randint(LETTER0, LETTER0 + self.alphabet, (n, self.difficulty), generator=generator,
                                device=dev)
        if self.mode == "mixed":
            ops = torch.randint(COPY, REVERSE + 1, (n, 1), generator=generator, device=dev)
        else:
            ops = torch.full((n, 1), COPY if self.mode == "copy" else REVERSE, device=dev)
        return torch.cat([ops, letters, torch.full((n, 1), EQUALS, device=dev)], dim=1)

    def targets(self, prompts: torch.Tensor) -> list[list[int]]:
        out = []
        for row in prompts.tolist():
            letters = row[1:-1]
            out.append((letters if row[0] == COPY else letters[::-1]) + [self.eos_id])
        return out


class StringEnv(TokenTaskEnv):
    """Copy or reverse a short string, one token per step.

    ## Description
    The prompt is an operation (``C`` copy / ``R`` reverse), a few letters and ``=``; the agent
    writes the copied or reversed letters and then ``<eos>``.

    ## Action Space
    ``Discrete(5 + alphabet)``: ``<pad> <eos> C R =`` and the letters.

    ## Observation Space
    ``MultiDiscrete([V] * (P + T))``: prompt tokens then the response so far, ``<pad>``-filled.

    ## Rewards
    0 until the end; then the fraction of target tokens (letters and ``<eos>``) in the right place,
    or exact match only with ``partial_credit=False``.

    ## Starting State
    Letters (and, in ``mixed`` mode, the operation) uniform, drawn from ``self.np_random``.

    ## Episode End
    After ``<eos>`` or ``difficulty + 1`` tokens.

    ## Arguments
    ``mode`` ("reverse"), ``difficulty`` (string length, 3), ``alphabet`` (4), ``partial_credit`` (True).
    """

    def __init__(self, mode: str = "reverse", difficulty: int = 3, alphabet: int = 4,
                 partial_credit: bool = True, render_mode: str | None = None):
        super().__init__(StringTask(mode, difficulty, alphabet, partial_credit), render_mode)
