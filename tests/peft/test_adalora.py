"""AdaLoRA: budget schedule (worked example), rank masking by hand, regularizer, reallocation."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lab.peft import AdaLoRALinear, RankAllocator, apply, budget_schedule, orthogonal_regularizer


def test_budget_schedule_worked_example_and_phases():
    kw = dict(total_step=1000, initial_budget=48, target_budget=32, tinit=100, tfinal=100)
    # (1 - 450/800)^3 = 0.0837 -> int(16 * 0.0837 + 32) = int(33.34) = 33
    assert budget_schedule(550, **kw) == (33, False)
    assert budget_schedule(100, **kw) == (48, False)        # warm-up: full budget
    assert budget_schedule(101, **kw)[0] == 47              # int(16 * (799/800)^3 + 32) = 47
    assert budget_schedule(901, **kw) == (32, True)         # final phase
    budgets = [budget_schedule(t, **kw)[0] for t in range(1000)]
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))   # monotone non-increasing


def test_rank_masking_prunes_lowest_triplet_scores_by_hand():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    apply(model, "adalora", rank=2)
    alloc = RankAllocator(model, target_r=1, total_step=10)
    layers = list(alloc.layers.values())
    with torch.no_grad():
        for m in layers:
            m.lora_E.fill_(1.0)
    # Prepare scores: only E carries importance; triplet scores (0.1, 0.4) and (0.3, 0.2)
    for m, s in zip(layers, ([0.1, 0.4], [0.3, 0.2])):
        alloc.ipt[id(m.lora_E)] = torch.tensor(s)[:, None]
        alloc.unc[id(m.lora_E)] = torch.ones(2, 1)
    # Execute: budget 2 of 4 -> prune the two lowest (0.1 in layer 0, 0.2 in layer 1)
    alloc.mask_to_budget(2)
    # Assert
    assert layers[0].rank_mask.tolist() == [False, True] and layers[1].rank_mask.tolist() == [True, False]
    assert layers[0].lora_E[:, 0].tolist() == [0.0, 1.0] and layers[1].lora_E[:, 0].tolist() == [1.0, 0.0]
    assert alloc.rank_pattern() == {"0": 1, "1": 1}


def test_init_keeps_base_output_and_merge_matches():
    torch.manual_seed(0)
    base = nn.Linear(4, 5)
    layer = AdaLoRALinear(base, rank=3)
    x = torch.randn(6, 4)
    assert torch.equal(layer(x), base(x))                   # Λ = 0 at init
    with torch.no_grad():
        layer.lora_E.normal_()
    adapted = layer(x)
    layer.merge()
    assert torch.allclose(layer(x), adapted, atol=1e-6)


def test_orthogonal_regularizer_is_zero_for_orthonormal_factors():
    model = nn.Sequential(nn.Linear(3, 3))
    apply(model, "adalora", rank=2)
    m = model[0]
    with torch.no_grad():
        m.lora_A.copy_(torch.eye(3)[:2])                    # Q Q^T = I
        m.lora_B.copy_(torch.eye(3)[:, :2])                 # P^T P = I
    assert float(orthogonal_regularizer(model, 0.5).detach()) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        m.lora_A.mul_(2.0)                                   # ||4I - I||_F = 3 sqrt(2)
    assert float(orthogonal_regularizer(model, 0.5).detach()) == pytest.approx(0.5 * 3 * 2 ** 0.5, rel=1e-5)


class _TwoBranch(nn.Module):
    """Two independent linear heads; the shifted task changes only the second."""

    def __init__(self):
        super().__init__()
        self.keep, self.shift = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return torch.cat([self.keep(x), self.shift(x)], dim=-1)


def test_adalora_moves_rank_to_the_layer_that_needs_it():
    torch.manual_seed(0)
    model = _TwoBranch()
    target_model = _TwoBranch()
    target_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        target_model.shift.weight += torch.randn(6, 3) @ torch.randn(3, 6) * 0.5   # rank-3 shift
    x = torch.randn(256, 6)
    y = target_model(x).detach()
    apply(model, "adalora", rank=3, generator=torch.Generator().manual_seed(0))
    alloc = RankAllocator(model, target_r=2, total_step=200, tinit=20, tfinal=40)   # budget 6 -> 4
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    for step in range(200):
        opt.zero_grad()
        (F.mse_loss(model(x), y) + orthogonal_regularizer(model, 0.1)).backward()
        opt.step()
        alloc.update_and_allocate(step)
    ranks = alloc.rank_pattern()
    assert ranks["shift"] == 3 and ranks["keep"] == 1


def test_bad_inputs():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no AdaLoRA"):
        RankAllocator(model, total_step=10)
    apply(model, "adalora", rank=2)
    with pytest.raises(ValueError, match="tinit"):
        RankAllocator(model, total_step=10, tinit=5, tfinal=5)
    with pytest.raises(ValueError, match="beta1"):
        RankAllocator(model, total_step=10, beta1=1.0)
    with pytest.raises(ValueError, match="total_step"):
        budget_schedule(0, total_step=0, initial_budget=4, target_budget=2)


def test_final_mask_is_chosen_once_and_target_budget_is_capped():
    model = nn.Sequential(nn.Linear(3, 3))
    apply(model, "adalora", rank=2)
    assert RankAllocator(model, target_r=5, total_step=10).target_budget == 2   # capped at b₀
    alloc = RankAllocator(model, target_r=1, total_step=10, tfinal=5)
    m = model[0]
    alloc.ipt[id(m.lora_E)], alloc.unc[id(m.lora_E)] = torch.tensor([[0.1], [0.4]]), torch.ones(2, 1)
    with torch.no_grad():
        m.lora_E.fill_(1.0)
    assert alloc.update_and_allocate(6) == 1                 # final phase: prune the 0.1 triplet
    assert m.rank_mask.tolist() == [False, True]
    alloc.ipt[id(m.lora_E)] = torch.tensor([[0.9], [0.0]])   # the scores flip ...
    with torch.no_grad():
        m.lora_E.fill_(1.0)
    alloc.update_and_allocate(7)
    assert m.rank_mask.tolist() == [False, True]             # ... but the final mask stays
    assert m.lora_E[:, 0].tolist() == [0.0, 1.0]             # and is re-applied to Λ
