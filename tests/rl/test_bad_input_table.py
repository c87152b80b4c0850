"""Bad input, table-driven over EVERY registered advantage estimator, policy loss and preference loss.

Each function is called through :func:`lab.rl.core.call_with` on a small valid batch, and then on
that batch with one defect. The rule (issue 13, "no silent failure"): a defect either raises a
``ValueError``/``TypeError`` whose message names the argument, or gives a finite result that the
shared input preparation documents:

- NaN/Inf on a valid token (mask = 1) of any per-token input, or in a per-response input
  (rewards, advantages): ``ValueError`` naming the input;
- NaN/-inf on padding (mask = 0): ignored; the result equals the clean batch's, gradients finite;
- a mask that is not bool or 0/1: ``ValueError`` naming the mask;
- an input whose shape does not match: ``ValueError``/``TypeError`` naming it (never a raw torch
  ``RuntimeError``/``IndexError``);
- an empty batch (B = 0): a named ``ValueError`` or a finite result (loss 0 with a graph).

New estimators and losses are picked up from the registry automatically.
"""
from __future__ import annotations

import math

import pytest
import torch

from lab.registry import available, get
from lab.rl.core import call_with, make_fn

# ------------------------------------------------------------------------------------------------
# valid batches
# ------------------------------------------------------------------------------------------------
B, T, G = 4, 3, 2
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
PAD = [(1, 2), (2, 1), (2, 2)]           # masked positions of MASK
VALID = (0, 1)                          # a valid position


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def policy_batch(n: int = B) -> dict:
    g = _gen()
    lp = torch.log(torch.rand(B, T, generator=g) * 0.8 + 0.1)
    batch = {
        "logprobs": lp, "old_logprobs": lp + 0.05 * torch.randn(B, T, generator=g),
        "ref_logprobs": lp + 0.1 * torch.randn(B, T, generator=g),
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5]), "mask": MASK.clone(),
        "entropy": torch.rand(B, T, generator=g) * 1.5, "rewards": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "group_size": G, "group_ids": torch.arange(B // G).repeat_interleave(G),
        "token_ids": torch.randint(2, 6, (B, T), generator=g), "values": torch.randn(B, T, generator=g),
        "old_values": torch.randn(B, T, generator=g), "returns": torch.randn(B, T, generator=g),
        "step": 1, "total_steps": 10, "beta": 0.1, "lengths": MASK.sum(-1),
        "demo_logprobs": torch.log(torch.rand(B // G, 2, generator=g) * 0.8 + 0.1),
        "demo_mask": torch.ones(B // G, 2, dtype=torch.bool),
    }
    if n != B:
        batch = _rows(batch, n)
    return batch


def estimator_batch(n: int = B) -> dict:
    from lab.experiments.zoo import zoo_batch

    batch = zoo_batch([1.0, 0.0, 0.0, 1.0], [3, 2, 1, 3], [0.1, 0.2, 0.9, 0.8], homogeneous=False)
    batch["group_size"] = G
    batch["group_ids"] = torch.arange(B // G).repeat_interleave(G)
    batch["node_ids"] = torch.stack([batch["group_ids"] * G + torch.arange(B) % G // 2,
                                     B + torch.arange(B)], dim=1)
    return batch if n == B else _rows(batch, n)


def preference_batch(n: int = 3) -> dict:
    g = _gen(1)
    P, Tw, Tl, V = 3, 4, 5, 6
    cm = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    rm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)

    def lp(*shape):
        return torch.log(torch.rand(*shape, generator=g) * 0.8 + 0.1)

    batch = {
        "chosen_logprobs": lp(P, Tw), "rejected_logprobs": lp(P, Tl), "chosen_mask": cm,
        "rejected_mask": rm, "ref_chosen_logprobs": lp(P, Tw), "ref_rejected_logprobs": lp(P, Tl),
        "pref_prob": torch.tensor([0.9, 0.6, 0.7]),
        "logprobs": lp(P, Tw), "mask": cm.clone(), "ref_logprobs": lp(P, Tw),
        "ref_sample_logprobs": lp(P, Tw), "ref_sample_ref_logprobs": lp(P, Tw), "ref_sample_mask": cm.clone(),
        "logits": torch.randn(P, Tw, V, generator=g), "labels": torch.randint(0, V, (P, Tw), generator=g),
    }
    if n != P:
        batch = _rows(batch, n, like=P)
    return batch


def _rows(batch: dict, n: int, like: int = B) -> dict:
    """The first ``n`` rows of every per-row tensor (n = 0: an empty batch)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == like:
            out[k] = v[:n]
        elif k in ("demo_logprobs", "demo_mask") and isinstance(v, torch.Tensor):
            out[k] = v[: n // G]
        else:
            out[k] = v
    return out


# per-token inputs and their masks; per-row inputs
POLICY_TOKENS = {k: "mask" for k in ("logprobs", "old_logprobs", "ref_logprobs", "entropy", "values",
                                     "old_values", "returns")}
POLICY_ROWS = ("advantages", "rewards")
ESTIMATOR_TOKENS = {k: "mask" for k in ("values", "token_rewards", "old_logprobs", "entropy", "cut_values")}
ESTIMATOR_ROWS = ("rewards",)
PREFERENCE_TOKENS = {"chosen_logprobs": "chosen_mask", "rejected_logprobs": "rejected_mask",
                     "ref_chosen_logprobs": "chosen_mask", "ref_rejected_logprobs": "rejected_mask",
                     "logprobs": "mask", "ref_logprobs": "mask",
                     "ref_sample_logprobs": "ref_sample_mask", "ref_sample_ref_logprobs": "ref_sample_mask",
                     "logits": "mask"}
GRAD = {"logprobs", "chosen_logprobs", "rejected_logprobs", "logits", "demo_logprobs", "values"}

KINDS = {
    "advantage": (estimator_batch, ESTIMATOR_TOKENS, ESTIMATOR_ROWS),
    "policy_loss": (policy_batch, POLICY_TOKENS, POLICY_ROWS),
    "preference_loss": (preference_batch, PREFERENCE_TOKENS, ()),
}
CASES = [(kind, name) for kind in KINDS for name in available(kind)]


def _ids(case):
    return f"{case[0]}/{case[1]}"


# ------------------------------------------------------------------------------------------------
# calling and judging
# ------------------------------------------------------------------------------------------------
def _prepared(batch: dict) -> dict:
    """Fresh leaves (grad where a model would give one) for one call."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().clone()
            if k in GRAD and v.is_floating_point():
                v.requires_grad_(True)
        out[k] = v
    return out


def _call(kind: str, name: str, batch: dict):
    fn = make_fn(kind, name)
    inputs = _prepared(batch)
    out = call_with(fn, inputs)
    value = out[0] if isinstance(out, tuple) else out
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = []
    if isinstance(value, torch.Tensor) and value.requires_grad and value.dim() == 0:
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value, [g for g in grads if g is not None]


def _finite(value, grads) -> bool:
    return bool(torch.isfinite(value).all()) and all(bool(torch.isfinite(g).all()) for g in grads)


def _takes(kind: str, name: str, arg: str) -> bool:
    import inspect

    obj = get(kind, name)
    fn = obj.__call__ if inspect.isclass(obj) else obj
    return arg in inspect.signature(fn).parameters


def _expect_named_error(kind, name, batch, arg):
    """A ValueError/TypeError naming ``arg`` -- never a silent NaN or a raw torch error."""
    try:
        value, grads = _call(kind, name, batch)
    except (ValueError, TypeError) as exc:
        assert arg in str(exc), f"{kind}/{name}: error does not name {arg!r}: {exc}"
        return
    pytest.fail(f"{kind}/{name}: bad {arg!r} was accepted (result finite: {_finite(value, grads)})")


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_clean_batch_gives_a_finite_result(case):
    kind, name = case
    make, _, _ = KINDS[kind]
    value, grads = _call(kind, name, make())
    assert _finite(value, grads)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_nan_or_inf_on_a_valid_token_raises_naming_the_input(case):
    kind, name = case
    make, tokens, rows = KINDS[kind]
    tried = 0
    for arg, mask_name in tokens.items():
        if not _takes(kind, name, arg):
            continue
        for bad in (math.nan, math.inf):
            batch = make()
            x = batch[arg].clone().double() if batch[arg].dtype == torch.float64 else batch[arg].clone()
            pos = next(tuple(p.tolist()) for p in batch[mask_name].nonzero())
            x[pos] = bad
            batch[arg] = x
            _expect_named_error(kind, name, batch, arg)
            tried += 1
    for arg in rows:
        if not _takes(kind, name, arg):
            continue
        batch = make()
        x = batch[arg].clone()
        x[0] = math.nan
        batch[arg] = x
        _expect_named_error(kind, name, batch, arg)
        tried += 1
    assert tried > 0


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_garbage_on_padding_is_ignored(case):
    kind, name = case
    make, tokens, _ = KINDS[kind]
    clean, _ = _call(kind, name, make())
    batch = make()
    touched = False
    for arg, mask_name in tokens.items():
        if not _takes(kind, name, arg):
            continue
        x = batch[arg].clone()
        pads = (~batch[mask_name].bool()).nonzero().tolist()
        for i, pos in enumerate(pads):
            x[tuple(pos)] = (math.nan, -math.inf, math.inf)[i % 3]
        batch[arg] = x
        touched = True
    if not touched:
        pytest.skip(f"{kind}/{name} takes no per-token input")
    value, grads = _call(kind, name, batch)
    assert _finite(value, grads), f"{kind}/{name}: padding leaked into the result"
    torch.testing.assert_close(value.detach().double(), clean.detach().double())


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, math.nan])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_masks_must_be_zero_or_one(case, bad):
    kind, name = case
    make, tokens, _ = KINDS[kind]
    masks = sorted({m for a, m in tokens.items() if _takes(kind, name, m)} | (
        {"mask"} if _takes(kind, name, "mask") else set()))
    if not masks:
        pytest.skip(f"{kind}/{name} takes no mask")
    for mask_name in masks:
        batch = make()
        m = batch[mask_name].float()
        m[0, 0] = bad
        batch[mask_name] = m
        _expect_named_error(kind, name, batch, mask_name)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_float_zero_one_mask_equals_the_bool_mask(case):
    kind, name = case
    make, tokens, _ = KINDS[kind]
    masks = {m for a, m in tokens.items() if _takes(kind, name, m)} | (
        {"mask"} if _takes(kind, name, "mask") else set())
    if not masks:
        pytest.skip(f"{kind}/{name} takes no mask")
    clean, _ = _call(kind, name, make())
    batch = make()
    for mask_name in masks:
        batch[mask_name] = batch[mask_name].float()
    value, _ = _call(kind, name, batch)
    torch.testing.assert_close(value.detach().double(), clean.detach().double())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_empty_batch_raises_or_is_finite(case):
    kind, name = case
    make, _, _ = KINDS[kind]
    try:
        value, grads = _call(kind, name, make(0))
    except (ValueError, TypeError) as exc:
        assert any(w in str(exc) for w in ("empty", "rows", "at least")), \
            f"{kind}/{name}: the error for an empty batch does not say so: {exc}"
        return
    except (RuntimeError, IndexError) as exc:                      # an obscure torch error
        pytest.fail(f"{kind}/{name}: empty batch gave {type(exc).__name__}: {exc}")
    assert _finite(value, grads), f"{kind}/{name}: empty batch gave a non-finite result"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_shape_mismatch_names_the_input(case):
    kind, name = case
    make, tokens, rows = KINDS[kind]
    tried = 0
    per_token = [a for a in tokens if _takes(kind, name, a)]
    for arg in list(tokens) + list(rows) + ["token_ids", "demo_logprobs", "mask", "labels"]:
        if not _takes(kind, name, arg):
            continue
        if arg == "mask" and kind == "advantage" and not per_token:
            continue                      # a mask only for the metrics: any width is consistent
        batch = make()
        if arg not in batch or not isinstance(batch[arg], torch.Tensor):
            continue
        x = batch[arg]
        # one extra column for per-token inputs, one extra row for per-row ones
        if x.dim() == 3:                  # logits (B, T, V): one extra position, any V is consistent
            grown = torch.cat([x, x[:, -1:]], dim=1)
        else:
            grown = torch.cat([x, x[..., -1:]], dim=-1) if x.dim() >= 2 else torch.cat([x, x[-1:]])
        batch[arg] = grown
        try:
            _call(kind, name, batch)
        except (ValueError, TypeError) as exc:
            tried += 1
            continue                      # any named check is fine: which input is reported varies
        except (RuntimeError, IndexError) as exc:
            pytest.fail(f"{kind}/{name}: a mis-shaped {arg!r} gave {type(exc).__name__}: {exc}")
        if arg in ("demo_logprobs",):     # an extra demonstration token is a valid input
            continue
        pytest.fail(f"{kind}/{name}: a mis-shaped {arg!r} {tuple(grown.shape)} was accepted")
    if tried == 0:
        pytest.skip(f"{kind}/{name}: no shaped input")
