"""HUT's Hadamard update by hand; IST's layer selection and response-suppression importance."""
import pytest
import torch
from torch import nn

from lab.peft import HUTLinear, IST, adapters, apply, select_layers


def test_hut_hadamard_update_hand_computed():
    # Prepare: W0 = [[1, 2], [0, 4]], r = 1, alpha = 1 (s = 1), B = [1, 2]^T, A = [1, -1]
    base = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 4.0]]))
    layer = HUTLinear(base, rank=1, alpha=1.0)
    x = torch.tensor([[1.0, 1.0]])
    assert torch.equal(layer(x), base(x))                       # B = 0: unchanged at init
    with torch.no_grad():
        layer.lora_B.copy_(torch.tensor([[1.0], [2.0]]))
        layer.lora_A.copy_(torch.tensor([[1.0, -1.0]]))
    # BA = [[1, -1], [2, -2]]; W = W0 ⊙ (1 + BA) = [[2, 0], [0, -4]]
    expected_w = torch.tensor([[2.0, 0.0], [0.0, -4.0]])
    assert torch.allclose(layer.base.weight + layer.delta_weight(), expected_w)
    assert torch.allclose(layer(x), x @ expected_w.T)
    layer.merge()
    assert torch.allclose(layer.base.weight, expected_w)


def test_hut_keeps_zero_weights_zero_and_can_exceed_rank_r():
    torch.manual_seed(0)
    base = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        base.weight[0, 0] = 0.0
    layer = HUTLinear(base, rank=1)
    with torch.no_grad():
        layer.lora_B.normal_()
    delta = layer.delta_weight()
    assert delta[0, 0] == 0.0                                   # multiplicative: 0 stays 0
    assert torch.linalg.matrix_rank(delta) > 1                  # W0 ⊙ (rank-1) is not rank 1


def test_select_layers_top_k_and_softmax_frequencies():
    scores = torch.tensor([0.1, 2.0, -1.0, 1.5])
    assert select_layers(scores, 2, temperature=0.0) == [1, 3]
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(2)
    for _ in range(2000):
        counts[select_layers(torch.tensor([0.0, 1.0]), 1, generator=g)[0]] += 1
    # P(layer 1) = e / (1 + e) = 0.731
    assert counts[1] / 2000 == pytest.approx(0.731, abs=0.03)


def test_ist_updates_only_selected_layers_and_scores_by_suppression():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    apply(model, "ist", rank=1)
    layers = adapters(model)
    with torch.no_grad():
        layers["1"].lora_B.fill_(1.0)                           # only layer 1's adapter does something
    ist = IST(layers, k=1, temperature=0.0, beta=0.5)
    ist.scores[1] = 1.0
    assert ist.select() == ["1"]
    x, y = torch.randn(8, 3), torch.randn(8, 3)
    loss_fn = lambda: ((model(x) - y) ** 2).mean()             # noqa: E731
    loss_fn().backward()
    assert layers["0"].lora_B.grad is None and layers["1"].lora_B.grad is not None
    with torch.no_grad():
        full = float(loss_fn())
        layers["1"].enabled = False
        suppressed = float(loss_fn())
        layers["1"].enabled = True
    drops = ist.update_importance(loss_fn)
    # s_1 = 0.5 * 1.0 + 0.5 * (L_suppressed - L)
    assert drops["1"] == pytest.approx(suppressed - full, abs=1e-6)
    assert float(ist.scores[1]) == pytest.approx(0.5 + 0.5 * (suppressed - full), abs=1e-6)


class _Heads(nn.Module):
    """Three independent linear heads; the shifted task changes only head 1."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x):
        return torch.cat([h(x) for h in self.heads], dim=-1)


def test_ist_importance_finds_the_layer_that_matters():
    torch.manual_seed(0)
    model, target = _Heads(), _Heads()
    target.load_state_dict(model.state_dict())
    with torch.no_grad():
        target.heads[1].weight += torch.randn(4, 2) @ torch.randn(2, 4)
    x = torch.randn(128, 4)
    y = target(x).detach()
    apply(model, "ist", rank=2, generator=torch.Generator().manual_seed(0))
    ist = IST(adapters(model), k=1, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    loss_fn = lambda: ((model(x) - y) ** 2).mean()             # noqa: E731
    first = float(loss_fn().detach())
    for _ in range(150):
        opt.zero_grad()
        ist.select()
        loss_fn().backward()
        opt.step()
        ist.update_importance(loss_fn)
    imp = ist.importance()
    assert max(imp, key=imp.get) == "heads.1"
    assert ist.counts[1] > ist.counts[0] and ist.counts[1] > ist.counts[2]   # picked most often
    assert float(loss_fn().detach()) < 0.1 * first


def test_ist_fits_the_shifted_task_updating_one_layer_per_step():
    from lab.experiments.peft import PeftConfig, peft_finetune

    frozen = peft_finetune(PeftConfig(method="frozen", steps=80))
    h = peft_finetune(PeftConfig(method="ist", steps=80, ist_k=1))
    assert h["test_loss"][-1] < 0.3 * frozen["test_loss"][-1]
    assert sum(h.artifacts["ist_counts"]) == 80                # one layer per step


def test_ist_bad_inputs():
    layers = {"a": HUTLinear(nn.Linear(2, 2))}
    with pytest.raises(ValueError, match="k"):
        IST(layers, k=2)
    with pytest.raises(ValueError, match="temperature"):
        IST(layers, temperature=-1.0)
    with pytest.raises(TypeError, match="layers"):
        IST({"a": nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="scores"):
        select_layers([1.0, 2.0], 1)


def test_ist_default_k_is_half_the_layers_and_its_bookkeeping_is_on_the_cpu():
    layers = {str(i): HUTLinear(nn.Linear(2, 2)) for i in range(5)}
    ist = IST(layers)
    assert ist.k == 2 and IST({"a": layers["0"]}).k == 1
    assert ist.scores.device.type == "cpu" and torch.equal(ist.scores, torch.zeros(5, dtype=torch.float64))
