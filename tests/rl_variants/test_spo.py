"""SPO: cut points, chain and tree segment advantages, the probability-mask loss."""
import numpy as np
import pytest
import torch

from lab.rl.core import clipped_policy_loss
from lab.rl.spo import first_visit_mask, spo, spo_chain, spo_cut_points, spo_tree

PROBS = torch.tensor([[0.95, 0.5, 0.99, 0.3, 0.97, 0.98]])


def _cut_values(**at):
    v = torch.full((1, 6), float("nan"))
    for k, val in at.items():
        v[0, int(k[1:])] = val
    return v


def test_spec_example_chain():
    # Prepare: low-probability tokens {1, 3} -> cuts {0, 2}; V(0) = 0.4, V(2) = 0.7, R = 1
    lp, mask = PROBS.log(), torch.ones(1, 6)
    assert spo_cut_points(lp, mask, interval=1) == [[0, 2]]
    # Execute
    adv, metrics = spo_chain(torch.tensor([1.0]), old_logprobs=lp, mask=mask,
                             cut_values=_cut_values(c0=0.4, c2=0.7), interval=1)
    # Assert: segments (0, 2] and (2, 5] both gain 0.3; only uncertain tokens 1 and 3 keep it
    assert adv[0].tolist() == pytest.approx([0, 0.3, 0, 0.3, 0, 0])
    assert metrics["spo/prob_mask_frac"] == pytest.approx(2 / 6)


def test_prompt_value_used_when_the_first_token_is_uncertain():
    probs = torch.tensor([[0.2, 0.95, 0.4, 0.99]])
    adv, _ = spo_chain(torch.tensor([0.0]), old_logprobs=probs.log(), mask=torch.ones(1, 4),
                       cut_values=torch.tensor([[0.6, 0.5, 0.0, 0.0]]),
                       prompt_values=torch.tensor([0.3]), interval=1)
    # cuts {-1, 1}: token 0 gets V(1) - V(prompt) = 0.2, token 2 gets R - V(1) = -0.5
    assert adv[0].tolist() == pytest.approx([0.2, 0.0, -0.5, 0.0])
    without, _ = spo_chain(torch.tensor([0.0]), old_logprobs=probs.log(), mask=torch.ones(1, 4),
                           cut_values=torch.tensor([[0.6, 0.5, 0.0, 0.0]]), interval=1)
    assert without[0].tolist() == pytest.approx([0.0, 0.0, -0.5, 0.0])


def test_interval_keeps_every_kth_cut():
    probs = torch.full((1, 12), 0.5)
    assert spo_cut_points(probs.log(), torch.ones(1, 12), interval=5) == [[-1, 4, 9]]


def test_token_level_limit_telescopes_to_reward_minus_prompt_value():
    # every token uncertain and interval 1: A_t = V(t) - V(t-1), summing to R - V(prompt)
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 7, generator=gen) * 0.8 + 0.05
    values = torch.rand(3, 7, generator=gen)
    rewards = torch.tensor([1.0, 0.0, 1.0])
    prompt = torch.tensor([0.5, 0.2, 0.9])
    adv, _ = spo_chain(rewards, old_logprobs=probs.log(), mask=torch.ones(3, 7), cut_values=values,
                       prompt_values=prompt, interval=1)
    assert adv.sum(-1).tolist() == pytest.approx((rewards - prompt).tolist(), abs=1e-6)
    assert torch.allclose(adv[:, 1:6], values[:, 1:6] - values[:, :5], atol=1e-6)


def test_no_cut_points_gives_zero_and_padding_is_ignored():
    probs = torch.tensor([[0.99, 0.95, 0.5, 0.5]])
    mask = torch.tensor([[1, 1, 0, 0]])
    adv, _ = spo_chain(torch.tensor([1.0]), old_logprobs=probs.log(), mask=mask,
                       cut_values=torch.zeros(1, 4))
    assert torch.all(adv == 0)


def test_tree_values_and_advantages_by_hand():
    # Prepare: 2x2 tree, two 2-token segments per leaf; leaf rewards (1, 0, 1, 1)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    nodes = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    seg = torch.tensor([[0, 0, 1, 1]] * 4)
    # Execute
    adv, _ = spo_tree(rewards, node_ids=nodes, segment_ids=seg, mask=torch.ones(4, 4), group_size=4)
    # Assert: V(root) = .75, V(a) = .5, V(b) = 1; leaves of a: +-.5, leaves of b: 0
    assert adv[:, 0].tolist() == pytest.approx([-0.25, -0.25, 0.25, 0.25])
    assert adv[:, 2].tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    grpo, _ = spo_tree(rewards, node_ids=nodes, segment_ids=seg, mask=torch.ones(4, 4),
                       group_size=4, adv_method="grpo")
    s = (0.5 * 0.25 ** 2 * 2) ** 0.5 * 2 ** 0.5  # unbiased std of (0.5, 1) = 0.3536
    assert grpo[0, 0].item() == pytest.approx(-0.25 / s, rel=1e-5)
    assert grpo[2, 2].item() == 0.0  # identical siblings: edge carries nothing


def test_first_visit_mask_trains_a_shared_segment_once():
    nodes = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    seg = torch.tensor([[0, 0, 1, 1]] * 4)
    keep = first_visit_mask(nodes, seg, torch.ones(4, 4))
    assert keep.sum().item() == 2 * 2 + 4 * 2  # two depth-0 segments, four depth-1 segments


def test_probability_mask_loss_trains_only_uncertain_tokens():
    logprobs = torch.log(torch.tensor([[0.95, 0.5, 0.99, 0.3]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    loss, metrics = spo(logprobs, None, adv, torch.ones(1, 4))
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([0, -0.5, 0, -0.5])
    ref, _ = clipped_policy_loss(logprobs, None, adv, torch.tensor([[0, 1, 0, 1]]))
    assert loss.item() == pytest.approx(ref.item())
    assert metrics["spo/prob_mask_frac"] == 0.5


def test_all_confident_tokens_give_an_empty_finite_loss():
    logprobs = torch.full((2, 3), -0.01, requires_grad=True)
    loss, metrics = spo(logprobs, None, torch.ones(2), torch.ones(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and metrics["num_tokens"] == 0 and torch.all(logprobs.grad == 0)


def test_bad_inputs_name_the_argument():
    lp, mask = PROBS.log(), torch.ones(1, 6)
    with pytest.raises(ValueError, match="cut_values"):
        spo_chain(torch.tensor([1.0]), old_logprobs=lp, mask=mask, cut_values=_cut_values(c0=0.4),
                  interval=1)
    with pytest.raises(ValueError, match="cut_values"):
        spo_chain(torch.tensor([1.0]), old_logprobs=lp, mask=mask, cut_values=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="prob_threshold"):
        spo(lp.requires_grad_(), None, torch.ones(1), mask, prob_threshold=0.0)
    with pytest.raises(ValueError, match="interval"):
        spo_cut_points(lp, mask, interval=0)
    with pytest.raises(ValueError, match="node_ids"):
        spo_tree(torch.ones(2), node_ids=torch.tensor([[0, 5], [1, 5]]),
                 segment_ids=torch.zeros(2, 2, dtype=torch.long), mask=torch.ones(2, 2), group_size=2)
    with pytest.raises(ValueError, match="adv_method"):
        spo_tree(torch.ones(2), node_ids=torch.tensor([[0], [1]]),
                 segment_ids=torch.zeros(2, 2, dtype=torch.long), mask=torch.ones(2, 2),
                 group_size=2, adv_method="gae")


# ---- behaviour on the toy tasks -------------------------------------------------------------
@pytest.fixture(scope="module")
def segment_run():
    from lab.experiments import run

    return run("segment_advantages", seed=0)


def test_segment_advantages_have_lower_variance_than_token_level_mc(segment_run):
    # equal budget of K completions per response: coarser segments get more samples per state
    var = segment_run["adv_var"]
    assert segment_run.steps.tolist() == [1, 2, 3, 6]
    # every segment level beats token-level MC, and the coarsest segments have the lowest
    # variance (neighbouring intermediate levels may swap: each is a noisy MC estimate)
    assert var[0] > var[1:].max()
    assert var[-1] == var.min()
    assert var[-1] < 0.5 * var[0]
    assert all(b > a for a, b in zip(segment_run["samples_per_state"][:-1], segment_run["samples_per_state"][1:]))


def test_tree_generates_far_fewer_tokens_per_trajectory_than_chain(segment_run):
    tree = segment_run.artifacts["tree"]
    chain = segment_run.artifacts["chain_response_tokens"] + segment_run["mc_tokens_per_response"][0]
    assert tree["leaves"] == 8
    assert tree["tokens_per_leaf"] < chain / 5


def test_spo_loss_in_policy_optimization_stops_training_confident_tokens():
    # the probability mask: once the sampled tokens are confident (π_old ≥ ρ) they leave the loss;
    # a step where none is left has no gradient. With ρ = 1 every token stays in.
    from lab.experiments import run

    h = run("policy_optimization", loss="spo(prob_threshold=0.5)", steps=40, lr=0.3, seed=1)
    assert h["spo/prob_mask_frac"][0] == 1.0 and h["spo/prob_mask_frac"][-5:].max() < 0.1
    empty = h["spo/prob_mask_frac"] == 0
    assert empty.any() and np.all(h["grad_norm"][empty] == 0)
    full = run("policy_optimization", loss="spo(prob_threshold=1.0)", steps=10, lr=0.3, seed=1)
    assert np.all(full["spo/prob_mask_frac"] == 1.0)


def test_spo_chain_needs_mc_values_the_loop_cannot_give():
    from lab.experiments import run

    with pytest.raises(TypeError, match="cut_values"):
        run("policy_optimization", advantage="spo_chain", loss="spo", steps=1)


def test_segment_panel_shows_the_spo_view():
    from lab.viz.lessons import segment_panel

    p = segment_panel("spo")
    assert p.last_error is None and len(p.figures) == 4
    with pytest.raises(ValueError, match="view"):
        segment_panel("nope")


def test_probability_mask_is_strict():
    from lab.rl.spo import uncertain_tokens
    old = torch.log(torch.tensor([[0.5, 0.25, 0.75]], dtype=torch.float64))
    assert old.exp()[0, 0].item() == 0.5                                   # exactly at ρ
    keep = uncertain_tokens(old, torch.ones(1, 3), prob_threshold=0.5)
    assert keep.tolist() == [[False, True, False]]                          # p < ρ, not p ≤ ρ


def test_segment_experiment_rejects_a_tree_deeper_than_the_response():
    """One segment per branching factor, each at least one token: depth <= response length T."""
    from lab.experiments.segments import SegmentConfig, segment_advantages

    base = dict(task="reverse(difficulty=2)", n_prompts=1, rollouts=2, intervals=(1,), repeats=2)
    with pytest.raises(ValueError, match="branch.*response length"):
        segment_advantages(SegmentConfig(**base, branch=(2,) * 9))
    with pytest.raises(ValueError, match="branch"):
        segment_advantages(SegmentConfig(**base, branch=()))
    with pytest.raises(ValueError, match="branch"):
        segment_advantages(SegmentConfig(**base, branch=(2, 0)))
