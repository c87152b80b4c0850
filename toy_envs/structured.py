"""A toy JSON-like output task with RL-Struct's verifiers.

The prompt gives two values ``[u, v]`` (digits); the reference output is the object

    {a:u,b:v}<eos>

over the vocabulary ``<pad> <eos> { } : , a b`` + digits + ``x`` (stray text). Verifiers on the
decoded content (the text before ``<eos>``), each in [0, 1], in the order of
:data:`lab.rewards.structured_output.COMPONENTS`:

    struct   share of the required keys ``a``, ``b`` that appear as ``key:``
    format   1 if the text starts with ``{`` and ends with ``}`` (no stray text around it)
    valid    1 if the text parses: ``{`` key ``:`` digit (``,`` key ``:`` digit)* ``}``, keys distinct
    correct  F1 of the parsed (key, value) pairs against the reference pairs
    length   1 if the content is no longer than the reference

``reward`` is the exact-match indicator (what a single-objective loop would use); a policy is
trained on the components through ``reward/structured_output``.
"""
from __future__ import annotations

import re

import torch

from toy_envs.token_tasks import TokenTask

KEYS = ("a", "b")
_PAIR = re.compile(r"([ab]):(\d)")


def parse_object(text: str) -> dict[str, str] | None:
    """The key -> value dict of a valid object text, else None."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    body = text[1:-1]
    if not body:
        return None
    out: dict[str, str] = {}
    for part in body.split(","):
        m = _PAIR.fullmatch(part)
        if m is None or m.group(1) in out:
            return None
        out[m.group(1)] = m.group(2)
    return out


def component_scores(text: str, reference: dict[str, str]) -> list[float]:
    """[struct, format, valid, correct, length] of one output text against the reference pairs."""
    parsed = parse_object(text)
    present = {m.group(1) for m in _PAIR.finditer(text)}
    struct = len(present & set(reference)) / len(reference)
    fmt = float(text.startswith("{") and text.endswith("}"))
    valid = float(parsed is not None)
    if parsed:
        hits = len(set(parsed.items()) & set(reference.items()))
        precision, recall = hits / len(parsed), hits / len(reference)
        correct = 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
    else:
        correct = 0.0
    target_len = len("{" + ",".join(f"{k}:{v}" for k, v in reference.items()) + "}")
    length = float(len(text) <= target_len)
    return [struct, fmt, valid, correct, length]


class StructuredTask(TokenTask):
    """Write ``{a:u,b:v}`` for the prompt ``[u, v]``.

    Args:
        n_digits: values are digits 0..n_digits−1 (3).
    """

    def __init__(self, n_digits: int = 3):
        if isinstance(n_digits, bool) or not isinstance(n_digits, int) or not 1 <= n_digits <= 10:
            raise ValueError(f"n_digits must be an int in [1, 10], got {n_digits!r}")
        self.n_digits = n_digits
        self.vocab = ("<pad>", "<eos>", "{", "}", ":", ",", "a", "b", *"0123456789"[:n_digits], "x")
        self.digit0 = 8
        self.prompt_len = 2
        self.max_new_tokens = 10
        self.objective_names = ("struct", "format", "valid", "correct", "length")

    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.n_digits, (n, 2), generator=generator, device=generator.device) + self.digit0

    def reference(self, prompt: torch.Tensor) -> dict[str, str]:
        """The reference pairs of one prompt."""
        return {k: str(int(v) - self.digit0) for k, v in zip(KEYS, prompt.tolist())}

    def targets(self, prompts: torch.Tensor) -> list[list[int]]:
        index = {s: i for i, s in enumerate(self.vocab)}
        out = []
        for p in prompts:
            ref = self.reference(p)
            text = "{" + ",".join(f"{k}:{v}" for k, v in ref.items()) + "}"
            out.append([index[c] for c in text] + [self.eos_id])
        return out

    def template_prior(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(max_new_tokens, V) 0/1: the structural token of the reference at each position
        (``{ a : , b : } <eos>``; every digit at the two value slots) — a "pretrained" prior that
        knows the syntax but not which value goes where."""
        index = {s: i for i, s in enumerate(self.vocab)}
        template = ["{", "a", ":", None, ",", "b", ":", None, "}", "<eos>"]
        prior = torch.zeros(self.max_new_tokens, self.vocab_size, device=device)
        for t, tok in enumerate(template):
            if tok is not None:
                prior[t, index[tok]] = 1.0
            else:
                prior[t, self.digit0:self.digit0 + self.n_digits] = 1.0
        return prior

    def texts(self, responses: torch.Tensor) -> list[str]:
        """Decoded content of each response (up to the first ``<eos>``)."""
        out = []
        for row in responses.tolist():
            end = row.index(self.eos_id) if self.eos_id in row else len(row)
            out.append("".join(self.vocab[i] for i in row[:end] if i != self.pad_id))
        return out

    def objectives(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(n, 5) component scores (struct, format, valid, correct, length)."""
        prompts, responses = self.check_batch(prompts, responses)
        return torch.tensor([component_scores(t, self.reference(p)) for t, p in zip(self.texts(responses), prompts)],
                            device=responses.device)

    def reward(self, prompts, responses, generator=None) -> torch.Tensor:
        """Exact match (1 or 0)."""
        return self.correct(prompts, responses).float()
