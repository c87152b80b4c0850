"""VAS: decoding-time value guidance of a frozen policy with a small value model."""
import pytest
import torch
from torch import nn

from lab.experiments import run
from lab.models.policy import TabularPolicy
from lab.registry import make
from lab.sampling.vas import VAS, TabularValue, TokenValueModel, ValueGuidedPolicy, vas_logits
from toy_envs.token_tasks import make_task


class LastTokenValue(nn.Module):
    """A stub value model: the value of a sequence is 0.1 × its last token id (at every position)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, input_ids):
        return self.scale * input_ids.float()


# ---------------------------------------------------------------- hand-computed values
def test_spec_example_logits():
    # Prepare: z = [2, 1, 0], top-2 = tokens 0 and 1 with values 0.2 and 0.6
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    # Execute
    guided = vas_logits(logits, torch.tensor([[0.2, 0.6]]), torch.tensor([[0, 1]]), beta=1.0)
    # Assert: centred values −0.2, +0.2; token 2 (outside the top-k) unchanged
    assert guided[0].tolist() == pytest.approx([1.8, 1.2, 0.0])


def test_guide_scores_each_candidate_appended_to_the_prefix():
    vas = VAS(LastTokenValue(), k=2, beta=2.0)
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]])          # top-2: tokens 1 and 2
    guided, _ = vas.guide(logits, torch.tensor([[3]]), torch.zeros(1, 0, dtype=torch.long))
    # V(s ⊕ 1) = 0.1, V(s ⊕ 2) = 0.2 -> centred ∓0.05, × β = 2 -> ∓0.1
    assert guided[0].tolist() == pytest.approx([0.0, 2.9, 2.1, 1.0])


def test_k_at_least_vocab_uses_every_token_and_beta_zero_is_the_base():
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    prompts, prefix = torch.tensor([[1]]), torch.tensor([[2]])
    all_tokens, _ = VAS(LastTokenValue(), k=50, beta=1.0).guide(logits, prompts, prefix)
    assert all_tokens[0].tolist() == pytest.approx([0.5 - 0.1, -1.0, 2.0 + 0.1])
    same, _ = VAS(LastTokenValue(), k=2, beta=0.0).guide(logits, prompts, prefix)
    assert torch.equal(same, logits)


def test_value_targets_are_lambda_returns():
    # λ = 1, γ = 1: every valid position's target is the final reward (Monte Carlo)
    model = TabularValue(vocab_size=4, prompt_len=1, max_new_tokens=3)
    vas = VAS(model, gamma=1.0, lam=1.0, lr=0.05)
    prompts = torch.tensor([[1], [2]])
    responses = torch.tensor([[2, 3, 1], [3, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss, metrics = vas.value_loss(prompts, responses, mask, torch.tensor([1.0, 0.5]))
    # q = 0 everywhere: L = ½ mean((0 − R)²) over 5 tokens = ½ (3·1 + 2·0.25) / 5
    assert loss.item() == pytest.approx(0.5 * 3.5 / 5)
    assert metrics["returns_mean"] == pytest.approx(4.0 / 5)
    for _ in range(200):
        vas.update(prompts, responses, mask, torch.tensor([1.0, 0.5]))
    assert vas.value_loss(prompts, responses, mask, torch.tensor([1.0, 0.5]))[0].item() < 1e-3


def test_state_dict_round_trip():
    task = make_task("arithmetic", max_operand=2)
    a = make("sampler", "vas", TokenValueModel.for_task(task), k=5, beta=2.0)
    ro_prompts = task.sample_prompts(4, torch.Generator().manual_seed(0))
    a.update(ro_prompts, torch.full((4, 2), 3), torch.ones(4, 2, dtype=torch.bool), torch.ones(4))
    b = VAS(TokenValueModel.for_task(task))
    b.load_state_dict(a.state_dict())
    assert (b.k, b.beta, b.updates) == (5, 2.0, 1)
    ids = torch.cat([ro_prompts, torch.full((4, 2), 3)], 1)
    assert torch.equal(a.value_model(ids), b.value_model(ids))


# ---------------------------------------------------------------- behaviour
def test_vas_raises_the_reward_of_a_frozen_policy_without_changing_it():
    h = run("value_augmented_sampling", betas=(0.0, 4.0, 8.0))
    reward = h.artifacts["reward"]
    assert reward[2] > reward[1] > reward[0]
    assert reward[2] > reward[0] + 0.2
    assert h.artifacts["base_weight_change"] == 0.0
    assert h["value_loss"][-5:].mean() < h["value_loss"][:5].mean()


def test_guided_policy_with_beta_zero_samples_like_the_base():
    task = make_task("arithmetic", max_operand=2)
    base = TabularPolicy.for_task(task, init_std=1.0, generator=torch.Generator().manual_seed(0))
    guided = ValueGuidedPolicy(base, VAS(TabularValue.for_task(task), beta=0.0))
    prompts = task.sample_prompts(8, torch.Generator().manual_seed(1))
    a = base.generate(prompts, 2, 1.0, torch.Generator().manual_seed(2), eos_id=1)
    b = guided.generate(prompts, 2, 1.0, torch.Generator().manual_seed(2), eos_id=1)
    assert torch.equal(a.tokens, b.tokens)
    assert all(p.requires_grad for p in base.parameters())             # π_0 is left as it was


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, error, match", [
    (lambda: VAS("not a model"), TypeError, "value_model"),
    (lambda: VAS(LastTokenValue(), k=0), ValueError, "k"),
    (lambda: VAS(LastTokenValue(), beta=-1.0), ValueError, "beta"),
    (lambda: VAS(LastTokenValue(), lam=1.5), ValueError, "lam"),
    (lambda: vas_logits(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(1, 2, dtype=torch.long)),
     ValueError, "candidate_values"),
    (lambda: vas_logits(torch.zeros(1, 3), torch.tensor([[0.0, float("nan")]]),
                        torch.zeros(1, 2, dtype=torch.long)), ValueError, "candidate_values"),
    (lambda: VAS(LastTokenValue()).value_loss(torch.ones(2, 1, dtype=torch.long), torch.ones(2, 3, dtype=torch.long),
                                              torch.ones(2, 3), torch.ones(3)), ValueError, "rewards"),
    (lambda: TabularValue(4, 1, 2)(torch.ones(1, 5, dtype=torch.long)), ValueError, "input_ids"),
    (lambda: run("value_augmented_sampling", value_model="mlp", steps=1), KeyError, "value_model"),
    (lambda: ValueGuidedPolicy(nn.Linear(2, 2), VAS(LastTokenValue())), TypeError, "base"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_value_models_live_where_the_caller_puts_them():
    with torch.device("meta"):
        table = TabularValue(3, 1, 2, device="cpu")
        values = table(torch.tensor([[1, 2, 0]], device="cpu"))
    assert table.table.device.type == "cpu" and values.device.type == "cpu" and values.shape == (1, 3)
