"""LoRA and the shared adapter machinery: hand-computed forward, merge, apply on real models."""
import copy

import pytest
import torch
from torch import nn

from lab.peft import LoRALinear, adapters, apply, merge, trainable_count, unmerge
from lab.peft.core import adapter_class
from lab.registry import available


def _linear(w, b):
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def test_lora_forward_hand_computed():
    # Prepare: W0 = I (2x2), b = 0, r = 1, alpha = 2 -> s = 2; A = [1, 1], B = [1, 0]^T
    layer = LoRALinear(_linear(torch.eye(2), torch.zeros(2)), rank=1, alpha=2.0)
    x = torch.tensor([[1.0, 2.0]])
    # Assert: B = 0 at init gives the base output exactly
    assert torch.equal(layer(x), x)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0], [0.0]]))
    # Execute / Assert: h = x + 2 * B (A x) = [1, 2] + 2 * [3, 0] = [7, 2]
    assert torch.allclose(layer(x), torch.tensor([[7.0, 2.0]]))
    assert torch.allclose(layer.delta_weight(), torch.tensor([[2.0, 2.0], [0.0, 0.0]]))


def test_scale_is_alpha_over_r_and_rslora():
    base = nn.Linear(4, 4)
    assert LoRALinear(base, rank=4, alpha=8.0).scaling == 2.0
    assert LoRALinear(nn.Linear(4, 4), rank=4, alpha=8.0, rslora=True).scaling == 4.0


def test_merge_equals_adapted_and_unmerge_restores():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(7, 5)
    adapted = layer(x)
    layer.merge()
    assert layer.merged and torch.allclose(layer(x), adapted, atol=1e-6)
    layer.merge()                                   # idempotent: no double counting
    assert torch.allclose(layer(x), adapted, atol=1e-6)
    layer.unmerge()
    assert torch.equal(layer.base.weight, w0) and not layer.merged


@pytest.mark.parametrize("method", available("peft"))
def test_merge_then_unmerge_restores_w0_exactly_for_every_peft_method(method):
    # Prepare: a layer whose update is far from zero (B ≠ 0) and large next to W0, in float64
    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(6, 5, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.randn(5, 6, generator=gen, dtype=torch.float64) * 1e-3)
    w0 = base.weight.detach().clone()
    layer = adapter_class(method)(base, rank=2, generator=gen)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if not name.startswith("base."):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 3.0)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    adapted, delta = layer(x), layer.delta_weight().detach().clone()
    # Execute / Assert: merged output = adapted output; ΔW does not change by merging
    layer.merge()
    torch.testing.assert_close(layer(x), adapted, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.delta_weight(), delta, rtol=0, atol=0)
    layer.unmerge()
    assert torch.equal(layer.base.weight, w0) and not layer.merged
    torch.testing.assert_close(layer(x), adapted, rtol=1e-12, atol=1e-12)   # adapted again
    layer.merge(); layer.unmerge(); layer.unmerge()                     # repeat; extra unmerge is a no-op
    assert torch.equal(layer.base.weight, w0)


def test_apply_freezes_base_counts_params_and_targets_by_name():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 6)
    before = model(x)
    n = apply(model, "lora", target=(r"^2$",), rank=3)
    # only layer "2" (8 -> 2): r (d + k) = 3 * (2 + 8)
    assert n == 30 == trainable_count(model)
    assert list(adapters(model)) == ["2"] and isinstance(model[0], nn.Linear)
    assert torch.equal(model(x), before)
    assert not any(p.requires_grad for p in model[0].parameters())


def test_lora_beats_frozen_base_on_shifted_task():
    from lab.experiments.peft import PeftConfig, peft_finetune

    frozen = peft_finetune(PeftConfig(method="frozen", steps=60))
    lora = peft_finetune(PeftConfig(method="lora", steps=60))
    assert lora["test_loss"][-1] < 0.3 * frozen["test_loss"][-1]
    assert lora.artifacts["merge_max_diff"] < 1e-5


@pytest.mark.slow
def test_apply_on_tiny_gpt2_handles_conv1d():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64)).eval()
    ids = torch.randint(0, 64, (2, 10))
    before = model(ids).logits
    n = apply(model, "lora", target=(r"attn\.c_attn",), rank=4)
    assert n == 2 * 4 * (32 + 96)                   # two c_attn layers, 32 -> 96
    assert torch.allclose(model(ids).logits, before, atol=1e-5)   # Conv1D -> Linear is exact
    for layer in adapters(model).values():
        with torch.no_grad():
            layer.lora_B.normal_(std=0.1)
    adapted = model(ids).logits
    merge(model)
    assert torch.allclose(model(ids).logits, adapted, atol=1e-4)
    assert not torch.allclose(model(ids).logits, before, atol=1e-3)   # the update is visible
    unmerge(model)
    torch.testing.assert_close(model(ids).logits, adapted)           # adapter branch is live again
    for layer in adapters(model).values():
        layer.enabled = False
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-5)   # W0 is back


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(2, 2), rank=0)
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(nn.Linear(2, 2), alpha=-1.0)
    with pytest.raises(TypeError, match="base"):
        LoRALinear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="target"):
        apply(nn.Sequential(nn.Linear(2, 2)), "lora", target=("nothing",))
    with pytest.raises(KeyError, match="lora"):
        apply(nn.Sequential(nn.Linear(2, 2)), "no_such_method")
    with pytest.raises(TypeError, match="target"):
        apply(copy.deepcopy(nn.Sequential(nn.Linear(2, 2))), "lora", target="0")


def test_lora_init_bound_and_dropout_only_on_the_branch():
    base = nn.Linear(16, 4)
    layer = LoRALinear(base, rank=3, dropout=0.5, generator=torch.Generator().manual_seed(0))
    assert layer.lora_A.abs().max() <= 1 / 16 ** 0.5 and torch.equal(layer.lora_B, torch.zeros(4, 3))
    layer.train()
    x = torch.randn(8, 16)
    assert torch.equal(layer(x), base(x))                  # B = 0: dropout never touches the base path
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    torch.manual_seed(1)
    drop_mask = (nn.Dropout(0.5)(torch.ones(8, 16)))       # the mask the branch will draw next
    torch.manual_seed(1)
    expected = base(x) + layer.scaling * ((x * drop_mask) @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
