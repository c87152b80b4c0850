"""Tiny policies: sampling, masks, exact entropies, and scoring consistent with sampling."""
import math

import pytest
import torch

from lab.models.policy import TabularPolicy, entropy_from_logits
from lab.models.transformer import TinyTransformer
from toy_envs.token_tasks import make_task


def _models(task, generator):
    torch.manual_seed(0)
    return [TabularPolicy.for_task(task, init_std=1.0, generator=generator), TinyTransformer.for_task(task)]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_generate_matches_score_and_masks(generator, temperature):
    task = make_task("arithmetic")
    prompts = task.sample_prompts(16, generator)
    for model in _models(task, generator):
        gen = model.generate(prompts, task.max_new_tokens, temperature, generator, eos_id=task.eos_id)
        scored = model.score(prompts, gen.tokens, temperature)
        # log-probs/entropies from sampling equal a fresh scoring pass on valid tokens
        assert torch.allclose(scored.logprobs[gen.mask], gen.logprobs[gen.mask], atol=1e-5)
        assert torch.allclose(scored.entropy[gen.mask], gen.entropy[gen.mask], atol=1e-5)
        # padding after the first <eos>: pad tokens, zero log-probs, mask = prefix up to <eos>
        lengths = task.response_lengths(gen.tokens)
        assert torch.equal(gen.mask.sum(-1), lengths)
        assert (gen.tokens[~gen.mask] == task.pad_id).all() and (gen.logprobs[~gen.mask] == 0).all()
        assert scored.logprobs.requires_grad


def test_tabular_entropy_is_exact(generator):
    task = make_task("token_bandit", n_arms=3)
    policy = TabularPolicy.for_task(task, init_std=2.0, generator=generator)
    prompts = task.sample_prompts(4, generator)
    gen = policy.generate(prompts, temperature=1.0, generator=generator)
    logits = policy.logits[policy.context_index(prompts), 0].detach()
    p = torch.softmax(logits, -1)
    assert torch.allclose(gen.entropy[:, 0], -(p * p.log()).sum(-1), atol=1e-6)
    assert torch.allclose(entropy_from_logits(torch.zeros(5)), torch.tensor(math.log(5)))


def test_sampling_frequencies_follow_softmax():
    task = make_task("token_bandit", probs=(0.1, 0.9))
    policy = TabularPolicy.for_task(task)
    with torch.no_grad():
        policy.logits[task.first_context, 0] = torch.tensor([-9.0, -9.0, -9.0, 0.0, math.log(3.0)])
    g = torch.Generator().manual_seed(1)
    gen = policy.generate(task.sample_prompts(4000, g), generator=g)
    share = (gen.tokens[:, 0] == task.first_arm + 1).float().mean().item()
    assert share == pytest.approx(0.75, abs=0.03)


def test_greedy_and_determinism(generator):
    task = make_task("reverse")
    model = TinyTransformer.for_task(task)
    prompts = task.sample_prompts(8, generator)
    a = model.generate(prompts, 4, 1.0, torch.Generator().manual_seed(5))
    b = model.generate(prompts, 4, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a.tokens, b.tokens)
    greedy = model.generate(prompts, 4, 0.0)
    logits = model(torch.cat([prompts, greedy.tokens[:, :1]], 1))[:, prompts.shape[1] - 1]
    assert torch.equal(greedy.tokens[:, 0], logits.argmax(-1))


def test_transformer_is_causal_and_value_head(generator):
    model = TinyTransformer(vocab_size=11, max_len=8, value_head=True)
    x = torch.randint(0, 11, (2, 8), generator=generator)
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 11
    assert torch.allclose(model(x)[:, :5], model(y)[:, :5], atol=1e-6)
    scored = model.score(x[:, :3], x[:, 3:])
    assert scored.values.shape == (2, 5)
    mask = torch.ones(2, 8)
    mask[0, 6:] = 0
    assert torch.allclose(model(x, mask)[0, :6], model(x)[0, :6], atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_heads"):
        TinyTransformer(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="too large"):
        TabularPolicy(vocab_size=50, prompt_len=6, max_new_tokens=2)
    task = make_task("reverse")
    model = TinyTransformer.for_task(task)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 50, dtype=torch.long))
    with pytest.raises(ValueError, match="prompts"):
        model.generate(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(2, 3, dtype=torch.long), 2, temperature=-1.0)
