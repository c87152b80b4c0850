"""The preference toy (Bradley–Terry data, reference policy, step pairs) and the behaviour tests on it."""
import numpy as np
import pytest
import torch

from lab.experiments import run
from lab.rl.core import masked_sum
from toy_envs.preferences import EOS, PreferenceTask, StepTask


# ---------------------------------------------------------------- the toy
def test_pairs_follow_the_bradley_terry_reward_and_lengths_vary(generator):
    task = PreferenceTask(seed=1)
    pairs = task.sample_pairs(200, generator, noisy_labels=False)
    # deterministic labels go to the better response; α_n = σ(r_w − r_l) ≥ 1/2
    assert (pairs.chosen_reward >= pairs.rejected_reward).all()
    assert torch.allclose(pairs.pref_prob, torch.sigmoid(pairs.chosen_reward - pairs.rejected_reward))
    assert torch.allclose(pairs.chosen_reward, task.reward(pairs.prompts, pairs.chosen))
    lengths = pairs.chosen_mask.sum(-1)
    assert lengths.min() >= task.min_len + 1 and lengths.max() <= task.max_len + 1 and len(lengths.unique()) > 2
    assert not (pairs.chosen == pairs.rejected).all(-1).any()
    # every response ends with <eos> (or is cut at max_len): the mask covers exactly the response
    last = pairs.chosen.gather(1, (lengths - 1)[:, None])[:, 0]
    assert (last == EOS).all()


def test_noisy_labels_match_the_bradley_terry_probability(generator):
    task = PreferenceTask(n_prompts=1, seed=2)
    pairs = task.sample_pairs(2000, generator, noisy_labels=True)
    # the chosen one is the better one with probability E[σ(|Δr|)]
    better = (pairs.chosen_reward > pairs.rejected_reward).float().mean().item()
    expected = torch.sigmoid((pairs.chosen_reward - pairs.rejected_reward).abs()).mean().item()
    assert better == pytest.approx(expected, abs=0.03)


def test_reference_policy_is_imperfect_and_length_biased(generator):
    task = PreferenceTask(seed=0)
    pairs = task.sample_pairs(256, generator, noisy_labels=False)
    ref = task.reference_policy()
    with torch.no_grad():
        s_w = masked_sum(ref.score(pairs.prompts, pairs.chosen).logprobs, pairs.chosen_mask, dim=-1)
        s_l = masked_sum(ref.score(pairs.prompts, pairs.rejected).logprobs, pairs.rejected_mask, dim=-1)
    accuracy = (s_w > s_l).float().mean().item()
    assert 0.5 < accuracy < 0.9                     # agrees with the reward in part, misranks some pairs
    # summed log-probs favour the shorter response far more often than length-normalized ones
    shorter_w = pairs.chosen_mask.sum(-1) < pairs.rejected_mask.sum(-1)
    longer_w = pairs.chosen_mask.sum(-1) > pairs.rejected_mask.sum(-1)
    assert (s_w > s_l)[shorter_w].float().mean() > (s_w > s_l)[longer_w].float().mean()


def test_step_pairs_hold_the_correct_prefix(generator):
    task = StepTask(n_problems=3, n_steps=3, step_len=2, seed=0)
    pairs = task.step_pairs(50, generator)
    for prompt, chosen, rejected in zip(pairs.prompts, pairs.chosen, pairs.rejected):
        content = prompt[prompt != 0]
        problem, prefix = int(content[0]) - 2, content[1:].view(-1, 2)
        k = prefix.shape[0]
        assert torch.equal(prefix, task.solutions[problem, :k])           # correct initial steps
        assert torch.equal(chosen, task.solutions[problem, k])            # the correct next step
        assert not torch.equal(rejected, chosen)                          # the first wrong step
    assert {int((p != 0).sum()) for p in pairs.prompts} == {1, 3, 5}       # prefixes of every length


def test_bad_toy_arguments():
    with pytest.raises(ValueError, match="max_len"):
        PreferenceTask(min_len=3, max_len=2)
    with pytest.raises(ValueError, match="n_prompts"):
        PreferenceTask(n_prompts=9, n_tokens=4)
    with pytest.raises(TypeError, match="n_steps"):
        StepTask(n_steps=2.5)


# ---------------------------------------------------------------- behaviour on the toy
def test_dpo_shows_likelihood_displacement():
    h = run("preference_training", loss="dpo", n_samples=8)
    # the loss falls and the margin between chosen and rejected grows ...
    assert h["loss"][-1] < h["loss"][0] - 0.1
    assert h["margin"][-1] > h["margin"][0] + 2.0 and h["reward_margin"][-1] > 0.2
    # ... while the chosen responses themselves become *less* likely
    assert h["chosen_logps"][-1] < h["chosen_logps"][0] - 0.5
    assert h["displacement"][-1] < -0.5
    assert h["rejected_logps"][-1] < h["chosen_logps"][-1]


@pytest.mark.parametrize("seed", [0, 1])
def test_alphapo_alpha_changes_displacement(seed):
    # α < 0 weights the likely (chosen) side more: less displacement than SimPO (α = 0) and α = 0.25
    drop = {a: run("preference_training", loss="alphapo", alpha=a, seed=seed, n_samples=8)["displacement"][-1]
            for a in (-1.0, 0.0, 0.25)}
    assert drop[-1.0] > drop[0.0] + 0.5
    assert drop[-1.0] > drop[0.25] + 0.5
    assert drop[0.0] < 0 and drop[0.25] < 0


def test_ranking_accuracy_stays_below_idealized_on_pairs_the_reference_misranks():
    h = run("preference_training", loss="dpo", n_samples=8)
    correct, ideal, ref_margin = (np.array(h.artifacts[k]) for k in ("final_correct", "idealized_correct",
                                                                       "ref_margin"))
    hard = (ref_margin <= 0) & ideal               # the optimum ranks these right (idealized accuracy 1)
    assert hard.sum() >= 10
    assert correct[hard].mean() < 1.0
    assert h["ranking_accuracy_ref_wrong"][-1] == pytest.approx(correct[hard].mean())
    assert h["ranking_accuracy_ref_wrong"][0] == 0.0
    # DPO does raise the accuracy from the reference's; the idealized value is fixed by π_ref and α
    assert h["ranking_accuracy"][-1] > h["ref_ranking_accuracy"][-1]
    assert np.ptp(h["idealized_ranking_accuracy"]) == 0.0


def test_step_dpo_fixes_the_chains_of_a_random_reference():
    h = run("step_dpo_chains")
    assert h["chain_accuracy"][0] <= 0.25 and h["chain_accuracy"][-1] >= 0.75
    assert h["step_accuracy"][-1] > h["step_accuracy"][0] + 0.5


def test_sft_learning_rate_reduction_limits_the_drift_from_the_reference():
    full = run("sft_divergences", steps=30)
    reduced = run("sft_divergences", steps=30, lr_factor=0.1)
    assert full["nll"][-1] < full["nll"][0] and reduced["nll"][-1] < reduced["nll"][0]
    assert reduced["kl"][-1] < 0.5 * full["kl"][-1]
    plain = run("sft_divergences", divergence="sft", steps=5)
    assert plain["nll"][-1] < plain["nll"][0] and plain["kl"][0] == 0.0


@pytest.mark.parametrize("loss", ["ipo", "simpo", "alphapo(alpha=1.0)", "dpo(label_smoothing=0.1)", "step_dpo"])
def test_every_pair_loss_trains_through_the_experiment(loss):
    # every pair loss pushes the chosen responses above the rejected ones: the policy's margin
    # S_w − S_l grows and the loss falls over a few steps
    h = run("preference_training", loss=loss, steps=5, n_samples=4)
    assert len(h["loss"]) == 6 and np.isfinite(h["loss"]).all()
    assert h["margin"][-1] > h["margin"][0] and h["loss"][-1] < h["loss"][0]


def test_overrides_reach_the_loss_or_are_reported():
    h = run("preference_training", loss="dpo", gamma=1.0, beta=0.5, steps=2, n_samples=4)
    assert h.meta["ignored"] == ["gamma"] and h.meta["loss_hparams"]["beta"] == 0.5
    assert h.meta["ideal_beta"] == 0.5
    h = run("preference_training", loss="alphapo(alpha=1.0)", alpha=0.5, steps=1, n_samples=4)
    assert h.meta["ignored"] == ["alpha"] and h.meta["loss_hparams"]["alpha"] == 1.0


def test_bad_configs():
    with pytest.raises(ValueError, match="lr"):
        run("preference_training", lr=0.0)
    with pytest.raises(KeyError, match="valid names"):
        run("preference_training", loss="kto", steps=1)
    with pytest.raises(ValueError, match="divergence"):
        run("sft_divergences", divergence="tv", steps=1)


def test_inverted_hinge_unlearns_with_less_damage_than_gradient_ascent():
    ihl = run("unlearning", method="ihl")
    ga = run("unlearning", method="ga")
    # IHL: the forget tokens lose their top spot to the runner-up ...
    assert ihl["target_prob"][-1] < 0.5 * ihl["target_prob"][0]
    assert ihl["runner_up_prob"][-1] > ihl["runner_up_prob"][0]
    assert ihl["target_top_frac"][-1] < 0.25
    # ... with a bounded loss, while gradient ascent drives the forget NLL (and the retain NLL) much higher
    assert ga["forget_nll"][-1] > 2 * ihl["forget_nll"][-1]
    assert ihl["retain_nll"][-1] < ga["retain_nll"][-1]
    with pytest.raises(ValueError, match="method"):
        run("unlearning", method="npo", steps=1)
