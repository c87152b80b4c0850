"""The tiny MoE transformer pools its layers' auxiliary loss exactly as Hugging Face does."""
import pytest
import torch

from lab.moe import AuxFreeBias, SwitchAux, ZLoss
from lab.moe.transformer import MoETransformer


def _model(make_balancer, n_layers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = MoETransformer(16, 16, n_layers, 2, 8, 2, max_len=12, make_balancer=make_balancer, generator=g)
    with torch.no_grad():  # sharper routers, so that the layers differ in balance
        for i, blk in enumerate(model.blocks):
            blk.moe.router.gate.weight.normal_(0.0, 1.0 + 2.0 * i, generator=g)
    return model, torch.randint(16, (4, 12), generator=g)


def test_aux_loss_equals_hugging_face_load_balancing_loss_with_several_layers():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    coef = 0.02  # a router_aux_loss_coef means the same in both
    model, tokens = _model(lambda i: SwitchAux(8, coef=coef))
    _, routes = model(tokens)
    hf = mixtral.load_balancing_loss_func(tuple(r.logits.reshape(-1, 8) for r in routes), 8, 2)
    assert model.aux_loss(routes).item() == pytest.approx(coef * float(hf.detach()), rel=1e-6)
    per_layer = sum(r.aux_loss.item() for r in routes)  # the old sum over layers is ~3x larger
    assert per_layer > 2.5 * model.aux_loss(routes).item()
    mask = torch.ones(4, 12, dtype=torch.int64)
    mask[0, 5:] = 0
    mask[3, 1:] = 0
    hf_m = mixtral.load_balancing_loss_func(tuple(r.logits.reshape(-1, 8) for r in routes), 8, 2, attention_mask=mask)
    assert model.aux_loss(routes, mask).item() == pytest.approx(coef * float(hf_m.detach()), rel=1e-6)
    model.aux_loss(routes).backward()  # the pooled loss trains every layer's router
    assert all(blk.moe.router.gate.weight.grad.abs().sum() > 0 for blk in model.blocks)


def test_z_loss_is_the_mean_over_all_layers_tokens():
    switch = pytest.importorskip("transformers.models.switch_transformers.modeling_switch_transformers")
    model, tokens = _model(lambda i: ZLoss(8, coef=1.0))
    _, routes = model(tokens)
    hf = switch.router_z_loss_func(torch.cat([r.logits for r in routes], dim=1))
    assert model.aux_loss(routes).item() == pytest.approx(float(hf.detach()), rel=1e-6)


def test_controllers_and_no_balancer_give_exactly_zero_and_routes_are_checked():
    for make_balancer in (None, lambda i: AuxFreeBias(8)):
        model, tokens = _model(make_balancer, n_layers=2)
        _, routes = model(tokens)
        assert model.aux_loss(routes).item() == 0.0
        with pytest.raises(ValueError, match="one RouterOutput per layer"):
            model.aux_loss(routes[:1])
