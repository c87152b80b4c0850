"""Small-number addition answered in digits: ``"07+05="`` -> ``"12<eos>"``.

Vocabulary: ``<pad> <eos> 0 1 2 3 4 5 6 7 8 9 + =`` (14 tokens). A prompt writes two operands
``a, b ∈ [0, max_operand]`` zero-padded to ``difficulty`` digits, so every prompt has the same
length ``P = 2·difficulty + 2``. The target is the decimal digits of ``a + b`` (no leading zeros)
followed by ``<eos>``; the reward is exact match or, with ``partial_credit``, the fraction of
target positions matched (see :mod:`toy_envs.token_tasks`). ``max_new_tokens`` leaves room for the
longest answer plus ``<eos>``.
"""
from __future__ import annotations

import torch

from toy_envs.token_tasks import TokenTask, TokenTaskEnv

DIGIT0 = 2          # token id of "0"
PLUS, EQUALS = 12, 13


class ArithmeticTask(TokenTask):
    """``a+b=`` with operands of ``difficulty`` digits (or at most ``max_operand``).

    Args:
        difficulty: digits per operand (1 -> operands 0..9).
        max_operand: largest operand (default ``10**difficulty - 1``); must fit the digits.
        partial_credit: reward = fraction of answer tokens right (else exact match only).
    """

    vocab = ("<pad>", "<eos>", *"0123456789", "+", "=")

    def __init__(self, difficulty: int = 1, max_operand: int | None = None, partial_credit: bool = True):
        if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 1:
            raise ValueError(f"difficulty must be an int >= 1 (digits per operand), got {difficulty!r}")
        top = 10 ** difficulty - 1
        max_operand = top if max_operand is None else max_operand
        if isinstance(max_operand, bool) or not isinstance(max_operand, int) or not 0 < max_operand <= top:
            raise ValueError(f"max_operand must be an int in [1, {top}] for difficulty {difficulty}, "
                             f"got {max_operand!r}")
        self.difficulty = difficulty
        self.max_operand = max_operand
        self.partial_credit = bool(partial_credit)
        self.prompt_len = 2 * difficulty + 2
        self.max_new_tokens = len(str(2 * max_operand)) + 1

    def _digits(self, values: torch.Tensor, width: int) -> torch.Tensor:
        # (n,) -> (n, width) tokens, most significant digit first
        powers = 10 ** torch.arange(width - 1, -1, -1, device=values.device)
        return (values[:, None] // powers) % 10 + DIGIT0

    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        operands = torch.randint(0, self.max_operand + 1, (n, 2), generator=generator,
                                 device=generator.device)                 # prompts live with the generator
        d = self.difficulty
        prompts = torch.empty(n, self.prompt_len, dtype=torch.long, device=generator.device)
        prompts[:, :d] = self._digits(operands[:, 0], d)
        prompts[:, d] = PLUS
        prompts[:, d + 1:2 * d + 1] = self._digits(operands[:, 1], d)
        prompts[:, -1] = EQUALS
        return prompts

    def operands(self, prompts: torch.Tensor) -> torch.Tensor:
        """(n, 2) integer operands read back from prompts."""
        d = self.difficulty
        powers = 10 ** torch.arange(d - 1, -1, -1, device=prompts.device)
        a = ((prompts[:, :d] - DIGIT0) * powers).sum(-1)
        b = ((prompts[:, d + 1:2 * d + 1] - DIGIT0) * powers).sum(-1)
        return torch.stack([a, b], -1)

    def targets(self, prompts: torch.Tensor) -> list[list[int]]:
        sums = self.operands(prompts).sum(-1).tolist()
        return [[DIGIT0 + int(c) for c in str(s)] + [self.eos_id] for s in sums]


class ArithmeticEnv(TokenTaskEnv):
    """Add two small numbers, one answer token per step.

    ## Description
    The prompt is ``a+b=`` with zero-padded operands; the agent writes the digits of ``a + b`` and
    then ``<eos>``.

    ## Action Space
    ``Discrete(14)``: ``<pad> <eos> 0-9 + =``.

    ## Observation Space
    ``MultiDiscrete([14] * (P + T))``: prompt tokens then the answer so far, ``<pad>``-filled.

    ## Rewards
    0 until the end; then the fraction of answer tokens (digits and ``<eos>``) in the right place
    (1 for an exact answer), or exact match only with ``partial_credit=False``.

    ## Starting State
    Operands uniform in ``[0, max_operand]``, drawn from ``self.np_random``.

    ## Episode End
    After ``<eos>`` or ``max_new_tokens`` tokens (answer digits + 1).

    ## Arguments
    ``difficulty`` (digits per operand, 1), ``max_operand`` (None = all ``difficulty``-digit
    numbers), ``partial_credit`` (True).
    """

    def __init__(self, difficulty: int = 1, max_operand: int | None = None, partial_credit: bool = True,
                 render_mode: str | None = None):
        super().__init__(ArithmeticTask(difficulty, max_operand, partial_credit), render_mode)
