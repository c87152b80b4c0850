"""GTPO: conflict-token protection and the entropy filter."""
import math

import pytest
import torch

from lab.rl.gtpo import conflict_masks, conflict_weights, entropy_adjusted_advantages, gtpo


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_forward_conflicts():
    # Prepare: o_1 = [5, 9, 7] (A = +1), o_2 = [5, 9, 8] (A = −1)
    tokens = torch.tensor([[5, 9, 7], [5, 9, 8]])
    adv = torch.tensor([1.0, -1.0])
    # Execute
    fwd, bwd = conflict_masks(tokens, adv, torch.ones(2, 3), group_size=2)
    lam = conflict_weights(fwd, bwd, adv)
    # Assert
    assert fwd.tolist() == [[True, True, False], [True, True, False]]
    assert not bwd.any()
    assert lam.tolist() == [[2.0, 2.0, 1.0], [0.0, 0.0, 1.0]]


def test_backward_conflicts_align_at_the_last_valid_token():
    tokens = torch.tensor([[5, 9, 7, 0], [3, 4, 9, 7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    fwd, bwd = conflict_masks(tokens, torch.tensor([1.0, -1.0]), mask, group_size=2)
    assert not fwd.any()
    assert bwd.tolist() == [[False, True, True, False], [False, False, True, True]]


def test_run_stops_at_first_non_conflict_and_groups_are_separate():
    # position 1 differs, so position 2's shared token is not part of the leading run
    tokens = torch.tensor([[5, 1, 7, 2], [5, 3, 7, 4], [5, 1, 7, 2], [6, 6, 6, 6]])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    fwd, _ = conflict_masks(tokens, adv, torch.ones(4, 4), group_ids=torch.tensor([0, 0, 1, 1]))
    assert fwd[:2].tolist() == [[True, False, False, False]] * 2
    assert not fwd[2:].any()          # group 1: no shared tokens between its P and N


def test_no_conflicts_without_both_signs():
    tokens = torch.tensor([[5, 9], [5, 9]])
    for adv in (torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.0])):
        fwd, bwd = conflict_masks(tokens, adv, torch.ones(2, 2), group_size=2)
        assert not fwd.any() and not bwd.any()


def test_entropy_filter_and_penalty():
    adv = torch.tensor([1.0, -1.0, 0.5])
    entropy = torch.tensor([[0.2, 0.4], [1.0, 1.0], [0.6, 0.6]])
    out, filtered = entropy_adjusted_advantages(adv, entropy, torch.ones(3, 2))
    # ⟨H⟩ = [0.3, 1.0, 0.6]: row 1 filtered (> 0.7); others A − 0.1⟨H⟩
    assert filtered.tolist() == [False, True, False]
    assert out.tolist() == pytest.approx([0.97, 0.0, 0.44])
    # the paper's rule: an uncertain initial model (⟨H⟩_ini > 0.7) is never filtered
    out2, filtered2 = entropy_adjusted_advantages(adv, entropy, torch.ones(3, 2), initial_entropy=2.0)
    assert not filtered2.any() and out2[1].item() == pytest.approx(-1.1)


def test_loss_hand_computed_on_policy():
    # Prepare: the spec group, uniform entropy 0.5 (penalty 0.05), on-policy
    tokens = torch.tensor([[5, 9, 7], [5, 9, 8]])
    lp = torch.zeros(2, 3, requires_grad=True)
    # Execute
    loss, m = gtpo(lp, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3), token_ids=tokens,
                   group_size=2, entropy=torch.full((2, 3), 0.5), return_per_token=True)
    loss.backward()
    # Assert: c = A'·λ = [[0.95·2, 0.95·2, 0.95], [0, 0, −1.05]]; seq_mean_token_mean
    expected_c = torch.tensor([[1.9, 1.9, 0.95], [0.0, 0.0, -1.05]])
    assert loss.item() == pytest.approx(-(expected_c.sum(1) / 3).mean().item(), abs=1e-6)
    assert torch.allclose(lp.grad, -expected_c / 6, atol=1e-6)
    assert m["gtpo/conflict_frac"] == pytest.approx(4 / 6)
    assert m["gtpo/protected_frac"] == pytest.approx(2 / 6)


# ---------------------------------------------------------------- behaviour: protection
def _brute_force_conflicts(tokens, adv, mask, group_size):
    """The paper's conflict runs, position by position (no lab code): a token is a forward
    conflict if the same token sits at the same position in a positive and in a negative
    completion of its group, and so does every earlier token of its completion; backward likewise,
    with positions counted from each completion's last valid token."""
    B, T = tokens.shape
    lengths = [int(mask[i].sum()) for i in range(B)]
    conflict = torch.zeros(B, T, dtype=torch.bool)
    for i in range(B):
        group = range(i // group_size * group_size, (i // group_size + 1) * group_size)
        pos = [j for j in group if adv[j] > 0]
        neg = [j for j in group if adv[j] < 0]

        def shared(t, key):                                   # key(j, t) -> position in row j
            v = tokens[i, t].item()
            hit = lambda rows: any(0 <= key(j, t) < lengths[j] and tokens[j, key(j, t)].item() == v
                                   for j in rows)
            return hit(pos) and hit(neg)

        for t in range(lengths[i]):                           # forward: the leading run
            if not shared(t, lambda j, t: t):
                break
            conflict[i, t] = True
        for t in reversed(range(lengths[i])):                 # backward: the trailing run
            if not shared(t, lambda j, t: lengths[j] - (lengths[i] - t)):
                break
            conflict[i, t] = True
    return conflict


def test_conflict_tokens_match_the_definition_and_never_get_a_negative_update():
    # random groups with a shared "format" prefix and ragged lengths; any entropy: the conflict set
    # is the definition's, and the gradient on every conflict token pushes it up (or leaves it)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens = torch.randint(2, 5, (8, 6), generator=g)
        tokens[:, :2] = 3
        lengths = torch.randint(3, 7, (8,), generator=g)
        mask = torch.arange(6)[None, :] < lengths[:, None]
        adv = torch.rand(8, generator=g) * torch.tensor([1.0, -1.0] * 4)     # both signs per group
        entropy = torch.rand(8, 6, generator=g)
        lp = torch.log(torch.rand(8, 6, generator=g)).requires_grad_()
        loss, m = gtpo(lp, None, adv, mask, token_ids=tokens, group_size=4,
                       entropy=entropy, initial_entropy=2.0, return_per_token=True)
        loss.backward()
        expected = _brute_force_conflicts(tokens, adv, mask, 4)
        assert expected.any()
        assert torch.equal(m["conflict"], expected)
        assert (lp.grad[expected] <= 0).all()                 # ∂L/∂ℓ ≤ 0: never pushed down
        negative = expected & (adv < 0)[:, None]
        assert (lp.grad[negative] == 0).all()                 # λ = 0 on a penalized answer's conflicts


def test_gtpo_keeps_the_shared_token_where_grpo_lowers_it():
    # one right answer (4 tokens) and three wrong ones (2 tokens), all starting with token 3; the
    # GRPO advantages of rewards [1, 0, 0, 0] and GRPO's own loss (per-response token mean): the
    # short wrong answers weigh their shared first token more (−0.5·3/2 vs +1.5/4), so one GRPO step
    # lowers it; GTPO skips the negative update on the conflict token and raises it
    from lab.registry import get
    tokens = torch.tensor([[3, 4, 5, 6], [3, 7, 0, 0], [3, 8, 0, 0], [3, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    adv, _ = get("advantage", "grpo")(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    probs = {}
    for name in ("grpo", "gtpo"):
        logits = torch.zeros(4, 10, requires_grad=True)                # position -> logits
        logp = torch.log_softmax(logits, -1)
        lp = logp.gather(1, tokens.T).T                                 # (4 answers, 4 positions)
        if name == "grpo":
            loss, _ = get("policy_loss", "grpo")(lp, None, adv, mask, beta=0.0)
        else:
            loss, _ = gtpo(lp, None, adv, mask, token_ids=tokens, group_size=4)
        loss.backward()
        with torch.no_grad():
            after = torch.softmax(logits - 4.0 * logits.grad, -1)[0, 3]      # one SGD step
        probs[name] = after.item()
    start = 1 / 10
    assert probs["grpo"] < start - 0.01 and probs["gtpo"] > start + 0.01


# ---------------------------------------------------------------- edge cases and bad input
def test_all_filtered_gives_zero_loss_and_divide_by_conflicts():
    tokens = torch.tensor([[5, 9, 7], [5, 9, 8]])
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, m = gtpo(lp, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3), token_ids=tokens,
                   group_size=2, entropy=torch.full((2, 3), 2.0))
    assert loss.item() == 0.0 and m["gtpo/filtered_frac"] == 1.0
    plain, _ = gtpo(lp, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3), token_ids=tokens, group_size=2)
    divided, _ = gtpo(lp, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3), token_ids=tokens,
                      group_size=2, divide_by_conflicts=True)
    # row 0: (2 + 2 + 1)/3 -> /2 conflicts; row 1: (0 + 0 − 1)/3 -> /2
    assert plain.item() == pytest.approx(-(5 / 3 - 1 / 3) / 2)
    assert divided.item() == pytest.approx(-(5 / 6 - 1 / 6) / 2)


def test_empty_mask_is_finite():
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, m = gtpo(lp, None, torch.tensor([1.0, -1.0]), torch.zeros(2, 3),
                   token_ids=torch.ones(2, 3, dtype=torch.long), group_size=2)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(lp.grad).all() and m["num_tokens"] == 0.0


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"token_ids": torch.ones(2, 3)}, TypeError, "token_ids"),
    ({"token_ids": torch.ones(2, 2, dtype=torch.long)}, ValueError, "token_ids"),
    ({"conflict_weight": 0.0}, ValueError, "conflict_weight"),
    ({"entropy_coef": -1.0, "entropy": torch.ones(2, 3)}, ValueError, "entropy_coef"),
])
def test_bad_input_names_the_argument(kwargs, exc, match):
    kwargs.setdefault("token_ids", torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(exc, match=match):
        gtpo(torch.zeros(2, 3, requires_grad=True), None, torch.tensor([1.0, -1.0]), torch.ones(2, 3),
             group_size=2, **kwargs)


def test_through_the_loop_code_rule_filters_a_uniform_policy_paper_rule_does_not():
    # a uniform start has mean entropy ln V > 0.7: the code's fixed threshold drops every answer,
    # the paper's δ rule (relative to the initial entropy) keeps training
    from lab.experiments import run
    kwargs = dict(advantage="grpo", task="token_bandit", steps=4)
    code_rule = run("policy_optimization", loss="gtpo", **kwargs)
    paper_rule = run("policy_optimization", loss=f"gtpo(initial_entropy={math.log(11):.4f})", **kwargs)
    assert (code_rule["grad_norm"] == 0).all()
    assert (paper_rule["grad_norm"] > 0).all()


def test_token_in_both_runs_gets_w_squared():
    # identical completions: every token is in the forward and the backward run
    tokens = torch.tensor([[5, 7, 5], [5, 7, 5]])
    adv = torch.tensor([1.0, -1.0])
    fwd, bwd = conflict_masks(tokens, adv, torch.ones(2, 3), group_size=2)
    assert fwd.all() and bwd.all()
    assert conflict_weights(fwd, bwd, adv).tolist() == [[4.0] * 3, [0.0] * 3]


def test_positive_and_negative_sets_come_from_the_advantages_before_the_entropy_penalty():
    # A_1 = +0.05, ⟨H⟩ = 0.6: A' = 0.05 − 0.1·0.6 = −0.01 < 0, yet completion 1 stays in P
    tokens = torch.tensor([[5, 9, 7], [5, 9, 8]])
    adv = torch.tensor([0.05, -1.0], dtype=torch.float64)
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    entropy = torch.full((2, 3), 0.6, dtype=torch.float64)
    _, m = gtpo(lp, None, adv, torch.ones(2, 3), token_ids=tokens, group_size=2, entropy=entropy,
                return_per_token=True)
    assert m["lambda"][0].tolist() == [2.0, 2.0, 1.0] and m["lambda"][1].tolist() == [0.0, 0.0, 1.0]
    # the conflict tokens of completion 1 are clamped at 0 (never pushed down), its last token is not
    assert m["per_token_loss"][0].tolist() == pytest.approx([0.0, 0.0, 0.01])


def test_off_policy_ratio_is_unclipped_unless_a_clip_range_is_given():
    tokens = torch.tensor([[1, 2], [3, 4]])                                 # no conflicts
    adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
    lp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    old = lp.detach() - math.log(2.0)                                       # ρ = 2
    loss, _ = gtpo(lp, old, adv, torch.ones(2, 2), token_ids=tokens, group_size=2)
    assert loss.item() == pytest.approx((-2.0 + 1.0) / 2)
    clipped, _ = gtpo(lp, old, adv, torch.ones(2, 2), token_ids=tokens, group_size=2,
                      clip_eps_low=0.2, clip_eps_high=0.2)
    assert clipped.item() == pytest.approx((-1.2 + 1.0) / 2)
