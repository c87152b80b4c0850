"""D³S: max-variance rollout subset, top |A|·H tokens, dynamic schedule."""
import itertools

import pytest
import torch

from lab.models.policy import TabularPolicy
from lab.registry import get
from lab.rl import call_with, make_fn
from lab.sampling.d3s import D3S, max_variance_subset, top_token_mask
from lab.rl.rollout import rollout
from toy_envs.token_tasks import make_task


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_subset():
    # Prepare / Execute
    chosen = max_variance_subset(torch.tensor([0.9, 0.9, -0.9, -0.9, 0.2, -0.2]), 4)
    # Assert: Var = 0.81, the maximum
    assert chosen.tolist() == [0, 1, 2, 3]


def test_subset_is_the_exhaustive_maximum():
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        values = torch.randn(7, generator=g)
        n = int(torch.randint(1, 8, (1,), generator=g))
        best = max(itertools.combinations(range(7), n),
                   key=lambda c: values[list(c)].var(unbiased=False).item())
        got = max_variance_subset(values, n)
        assert values[got].var(unbiased=False).item() == pytest.approx(
            values[list(best)].var(unbiased=False).item(), abs=1e-6)


def test_token_mask_keeps_top_scores_and_one_per_row():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.02, 0.01]])
    keep = top_token_mask(scores, torch.ones(2, 3), 0.2)           # ceil(0.2·6) = 2 tokens
    assert keep.tolist() == [[True, True, False], [True, False, False]]  # row 1 keeps its best


def test_constant_advantage_token_level_is_top_entropy():
    # with |A| constant the token score is the entropy (TRL's top-entropy quantile)
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.7, 0.4]])
    new_mask, _ = D3S(n_init=1.0, k_init=0.5).select(torch.ones(2), entropy, torch.ones(2, 4))
    assert new_mask.tolist() == [[False, True, True, False], [True, False, True, False]]


def test_schedule_relaxes_to_the_full_batch():
    sampler = D3S(n_init=0.5, n_final=1.0, k_init=0.2, k_final=1.0, total_steps=10)
    assert sampler.shares(0) == pytest.approx((0.5, 0.2))
    assert sampler.shares(5) == pytest.approx((0.75, 0.6))
    assert sampler.shares(20) == pytest.approx((1.0, 1.0))
    adv, entropy, mask = torch.randn(8), torch.rand(8, 3), torch.ones(8, 3)
    full, metrics = sampler.select(adv, entropy, mask, step=10)
    assert full.all() and metrics["d3s/token_frac"] == 1.0
    for _ in range(3):
        sampler.update()
    restored = D3S()
    restored.load_state_dict(sampler.state_dict())
    assert restored.step == 3 and restored.shares() == sampler.shares()


# ---------------------------------------------------------------- edge cases and bad input
def test_all_zero_advantages_return_first_rows():
    assert max_variance_subset(torch.zeros(5), 3).tolist() == [0, 1, 2]
    new_mask, _ = D3S().select(torch.zeros(4), torch.rand(4, 2), torch.ones(4, 2))
    assert new_mask[2:].sum() == 0 and new_mask[:2].any(-1).all()


@pytest.mark.parametrize("make, match", [
    (lambda: max_variance_subset(torch.zeros(3), 4), "n"),
    (lambda: max_variance_subset(torch.tensor([0.0, float("nan")]), 1), "values"),
    (lambda: D3S(n_init=0.0), "n_init"),
    (lambda: D3S(total_steps=0), "total_steps"),
    (lambda: top_token_mask(torch.ones(1, 2), torch.ones(1, 2), 1.5), "keep_frac"),
])
def test_bad_input_names_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- behaviour
def _grad_norm(policy, ro, batch, mask):
    loss_fn = make_fn("policy_loss", "grpo(beta=0.0)")
    policy.zero_grad()
    scored = policy.score(ro.prompts, ro.tokens)
    loss, _ = call_with(loss_fn, {**batch, "logprobs": scored.logprobs, "mask": mask})
    loss.backward()
    return policy.logits.grad.norm().item()


def test_selected_subset_has_larger_variance_and_gradient_than_random_subsets():
    # Prepare: a GRPO batch of a randomly initialized tabular policy on arithmetic (partial credit)
    task = make_task("arithmetic", max_operand=4)
    g = torch.Generator().manual_seed(0)
    policy = TabularPolicy.for_task(task, init_std=1.0, generator=g)
    ro = rollout(policy, task, n_prompts=8, group_size=8, generator=g)
    batch = ro.batch()
    adv, _ = call_with(get("advantage", "grpo"), batch)
    batch["advantages"] = adv
    n = adv.shape[0] // 4
    # Execute: D³S's sample level (token level off) vs random subsets of the same size
    sampler = D3S(n_init=0.25, k_init=1.0)
    d3s_mask, metrics = sampler.select(adv, ro.entropy, ro.mask)
    rows = d3s_mask.any(-1)
    var_d3s, grad_d3s = adv[rows].var(unbiased=False).item(), _grad_norm(policy, ro, batch, d3s_mask)
    var_rand, grad_rand = [], []
    for _ in range(10):
        pick = torch.zeros(adv.shape[0], dtype=torch.bool)
        pick[torch.randperm(adv.shape[0], generator=g)[:n]] = True
        var_rand.append(adv[pick].var(unbiased=False).item())
        grad_rand.append(_grad_norm(policy, ro, batch, ro.mask & pick[:, None]))
    # Assert
    assert rows.sum() == n and metrics["d3s/var_selected"] == pytest.approx(var_d3s, rel=1e-5)
    assert var_d3s > max(var_rand)
    assert grad_d3s > max(grad_rand)


def test_token_view_reports_the_d3s_selection():
    from lab.experiments import run
    h = run("token_view", d3s_rows=0.5, d3s_keep=0.25, seed=1)
    keep = torch.tensor([[v if v is not None else 0.0 for v in row] for row in h.artifacts["d3s_keep"]])
    rows = keep.sum(-1) > 0
    assert rows.sum() == len(keep) // 2                       # N_t = 50% of the rollouts
    assert h.last("d3s/token_frac") == pytest.approx(keep.sum().item() / sum(
        v is not None for row in h.artifacts["d3s_keep"] for v in row))


def test_token_view_figure_has_one_panel_per_method_view_and_unique_rows():
    from lab.experiments import run
    from lab.viz.zoo import TOKEN_PANELS, token_view_figure
    h = run("token_view", group_size=4, n_prompts=2)
    fig = token_view_figure(h)
    assert len(fig.data) == len(TOKEN_PANELS)
    rows = fig.data[0].y
    assert len(rows) == 8 and len(set(rows)) == 8


def test_token_advantages_enter_the_sample_level_as_their_masked_mean_and_selection_ignores_the_generator():
    # masked means 1, −1, 0.05, −0.05 -> the max-variance pair is rows 0, 1 (the first tokens alone, or
    # the padding, would pick rows 2, 3)
    adv = torch.tensor([[0.0, 2.0, 0.0], [0.0, -2.0, 0.0], [5.0, -4.9, 99.0], [-5.0, 4.9, -99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
    sampler = D3S(n_init=0.5, k_init=1.0)
    a, _ = sampler.select(adv, torch.ones(4, 3), mask, generator=torch.Generator().manual_seed(0))
    b, _ = sampler.select(adv, torch.ones(4, 3), mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.any(-1).tolist() == [True, True, False, False]
