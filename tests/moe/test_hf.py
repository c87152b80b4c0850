"""lab.moe.hf: the lab's balancers on tiny Hugging Face MoE models (random weights, no download)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from lab.moe import AuxFreeBias, SwitchAux  # noqa: E402
from lab.moe.hf import ARCHS, attach, find_routers, tiny_model  # noqa: E402

pytestmark = pytest.mark.slow  # building four HF model families; each test itself takes seconds


def _model(arch, **kw):
    kw.setdefault("n_layers", 3)
    if arch == "deepseek_v3":
        kw.setdefault("n_group", 2)
        kw.setdefault("topk_group", 1)
    model = tiny_model(arch, **kw)
    with torch.no_grad():  # sharper routers than HF's std 0.02 init, so that choices are not ties
        g = torch.Generator().manual_seed(1)
        for _, router in find_routers(model):
            router.weight.copy_(torch.randn(router.weight.shape, generator=g))
    return model


def _tokens(seed=0, b=3, s=10, vocab=64):
    return torch.randint(vocab, (b, s), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_attach_finds_every_router_and_records_loads(arch):
    model = _model(arch)
    handle = attach(model, "aux_free_bias")
    assert len(handle.layers) == 3 and all(name.endswith("mlp.gate") for name in handle.layers)
    model(_tokens())
    stats = handle.stats()
    assert stats["load"].shape == (3, 8) and (stats["load"].sum(1) == 2 * 30).all()  # k T per layer
    assert stats["bias"].shape == (3, 8) and stats["max_violation"].shape == (3,)
    handle.detach()


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_aux_loss_equals_hugging_face_own_loss_on_the_same_forward(arch):
    model = _model(arch)
    coef = model.config.router_aux_loss_coef  # 0.001: the default coef of attach("switch_aux")
    handle = attach(model, "switch_aux")
    tokens = _tokens()
    mask = torch.ones_like(tokens)
    mask[0, 6:] = 0
    for attention_mask in (None, mask):
        out = model(tokens, attention_mask=attention_mask, output_router_logits=True)
        assert handle.aux_loss(attention_mask).item() == pytest.approx(coef * out.aux_loss.item(), rel=1e-5)
    per_layer = sum(SwitchAux(8, coef=coef).loss(lg.reshape(-1, 8), lg.softmax(-1).topk(2, -1).indices)[0].item()
                    for lg in out.router_logits)
    assert per_layer > 2 * handle.aux_loss().item()  # a sum over layers would be ~3x too strong
    handle.aux_loss().backward()
    assert all(r.weight.grad.abs().sum() > 0 for _, r in find_routers(model))
    handle.detach()


def test_deepseek_v3_aux_loss_is_hugging_face_function_on_its_router_logits():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    model = _model("deepseek_v3", n_group=1, topk_group=1)  # ungrouped: TopK(sigmoid) = TopK(softmax)
    handle = attach(model, "switch_aux(coef=1.0)")
    out = model(_tokens(), output_router_logits=True)
    hf = load_balancing_loss_func(tuple(out.router_logits), 8, 2)
    assert handle.aux_loss().item() == pytest.approx(hf.item(), rel=1e-5)
    handle.detach()
    from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func

    # z-loss: HF's Switch Transformers function over the layers' concatenated tokens
    with attach(model, "z_loss(coef=1.0)") as zh:
        out = model(_tokens(), output_router_logits=True)
        layers = torch.cat([lg.reshape(3, 10, 8) for lg in out.router_logits], dim=1)
        assert zh.aux_loss().item() == pytest.approx(router_z_loss_func(layers).item(), rel=1e-5)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_selection_patch_is_exact_at_zero_bias_and_biases_only_the_choice(arch):
    model = _model(arch)
    tokens = _tokens()
    before = model(tokens).logits
    handle = attach(model, "aux_free_bias")
    assert torch.equal(model(tokens).logits, before)  # zero bias: exactly HF's own choice and weights
    name, router = find_routers(model)[1]
    layer = handle._layers[1]
    layer.balancer.bias = torch.tensor([0.3, -0.2, 0.0, 0.1, -0.3, 0.2, 0.0, 0.0], dtype=torch.float64)
    h = torch.randn(40, router.hidden_dim, generator=torch.Generator().manual_seed(2))
    logits, weights, indices = router(h)  # through the hook
    probs = torch.softmax(logits.float(), -1)
    assert torch.equal(indices, (probs + layer.balancer.bias.float()).topk(2, -1).indices)
    assert not torch.equal(indices, probs.topk(2, -1).indices)  # the bias moved tokens ...
    gates = probs.gather(-1, indices)
    if getattr(router, "norm_topk_prob", True):
        gates = gates / gates.sum(-1, keepdim=True)
    assert torch.allclose(weights.float(), gates, atol=1e-7, rtol=0)  # ... the weights stay unbiased
    handle.detach()


def test_deepseek_v3_bias_goes_into_e_score_correction_bias_and_is_restored():
    model = _model("deepseek_v3")
    routers = [r for _, r in find_routers(model)]
    with torch.no_grad():  # a "pretrained" correction bias that attach must start from and restore
        routers[0].e_score_correction_bias.copy_(torch.linspace(-0.05, 0.05, 8))
    saved = [r.e_score_correction_bias.clone() for r in routers]
    tokens = _tokens(b=8, s=16)
    before = model(tokens).logits
    handle = attach(model, "aux_free_bias", update_rate=0.02)
    assert torch.equal(handle._layers[0].balancer.bias.float(), saved[0])
    model(tokens)
    load = handle.stats()["load"][0]
    handle.update()
    step = routers[0].e_score_correction_bias - saved[0]
    # the sign rule wrote into HF's own buffer: +u for underloaded experts, -u for overloaded ones
    expected = 0.02 * torch.sign(load.mean() - load)
    assert torch.allclose(step.double(), expected, atol=1e-6)
    _, weights, indices = routers[0](torch.randn(20, 32, generator=torch.Generator().manual_seed(3)))
    assert indices.shape == (20, 2)  # HF's router now routes with the written bias (group-limited)
    for _ in range(5):
        model(tokens)
        handle.update()
    assert not torch.equal(model(tokens).logits, before)
    handle.detach()
    assert all(torch.equal(r.e_score_correction_bias, s) for r, s in zip(routers, saved))
    assert torch.equal(model(tokens).logits, before)  # the model is exactly as before attach


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("balancer", ["aux_free_bias", "stochastic_balance", "switch_aux", None])
def test_detach_restores_the_model_exactly(arch, balancer):
    model = _model(arch, n_layers=2)
    tokens = _tokens()
    before = model(tokens).logits
    handle = attach(model, balancer)
    for _ in range(4):
        model(tokens)
        handle.update()
    handle.detach()
    handle.detach()  # idempotent
    assert torch.equal(model(tokens).logits, before)
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not r._forward_hooks for _, r in find_routers(model))
    with pytest.raises(RuntimeError, match="detached"):
        handle.update()


@pytest.mark.parametrize("arch", ["mixtral", "deepseek_v3"])
def test_controller_balances_a_frozen_model_on_skewed_tokens(arch):
    from toy_envs.routing import TopicMarkovCorpus

    model = tiny_model(arch, n_layers=2)  # HF's own initialization
    corpus = TopicMarkovCorpus(64, 8, token_skew=1.5)  # a few tokens dominate the stream
    batches, _ = corpus.sample_steps(150, 16, 16, torch.Generator().manual_seed(0))
    handle = attach(model, "aux_free_bias", update_rate=3e-3)
    with torch.no_grad():
        loads = []
        for tokens in batches:
            model(tokens)
            loads.append(handle.update()["load"])
    first, last = loads[0], torch.stack(loads[-20:]).sum(0)  # (L, E): the first step, the last 20 steps
    vio = lambda load: (load.max(-1).values / load.mean(-1) - 1).max().item()  # noqa: E731
    assert vio(first) > 0.8  # the frequent tokens overload their experts (measured 0.94 / 1.0) ...
    assert vio(last) < 0.15  # ... until the biases move tokens to idle experts (0.11 / 0.07)
    handle.detach()


def test_update_loads_are_counted_once_under_gradient_checkpointing():
    model = _model("mixtral", n_layers=2)
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()
    handle = attach(model, "switch_aux")
    out = model(_tokens(), labels=_tokens())
    (out.loss + handle.aux_loss()).backward()  # recomputes the checkpointed forwards
    assert (handle.update()["load"].sum(1) == 2 * 30).all()
    handle.detach()


def test_bad_input_is_named():
    model = _model("mixtral", n_layers=2)
    with pytest.raises(ValueError, match="update_rate"):
        attach(model, "switch_aux", update_rate=0.1)
    with pytest.raises(ValueError, match="update_rate"):
        attach(model, "aux_free_bias", update_rate=-1.0)
    with pytest.raises(ValueError, match="experts"):
        attach(model, AuxFreeBias(4))
    with pytest.raises(TypeError, match="balancer must be"):
        attach(model, 3)
    with pytest.raises(KeyError):
        attach(model, "no_such_balancer")
    with pytest.raises(TypeError, match="no supported MoE router"):
        attach(torch.nn.Linear(2, 2), "aux_free_bias")
    with pytest.raises(TypeError, match="model must be"):
        attach("mixtral", "aux_free_bias")
    handle = attach(model, "switch_aux")
    with pytest.raises(RuntimeError, match="no forward pass"):
        handle.aux_loss()
    with pytest.raises(ValueError, match="already has a balancer"):
        attach(model, "aux_free_bias")
    handle.detach()
    with pytest.raises(ValueError, match="arch"):
        tiny_model("llama")


def test_a_failed_attach_leaves_no_hook_behind():
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    routers = torch.nn.ModuleList([
        MixtralTopKRouter(transformers.MixtralConfig(hidden_size=8, num_local_experts=e, num_experts_per_tok=2))
        for e in (8, 4)])  # the second layer does not fit an 8-expert template
    with pytest.raises(ValueError, match="experts"):
        attach(routers, AuxFreeBias(8))
    assert not routers[0]._forward_hooks and not routers[1]._forward_hooks and not routers._forward_pre_hooks
    assert not hasattr(routers, "_lab_balancer_handle")


# ---------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", ["mixtral", "deepseek_v3"])
def test_training_on_a_skewed_stream_balances_with_the_bias_and_not_without(arch):
    """300 AdamW steps (8 x 16 tokens of a Zipf-skewed topic language) on a tiny HF model.

    Measured (seed 0, one thread): max violation of the last 50 steps' load, worst layer - Mixtral:
    none 2.57, aux_free_bias 0.054, switch_aux at HF's coefficient 1e-3 2.47; DeepSeek-V3 (2 groups,
    1 kept): none 1.19, aux_free_bias 0.067, switch_aux 0.74. LM loss of the last 50 steps,
    aux_free_bias minus switch_aux: +0.011 (Mixtral: 2.252 vs 2.241), +0.001 (DeepSeek-V3: 2.290
    vs 2.289). About 50-60 s per architecture on one loaded CPU thread.
    """
    from lab.experiments import run
    from lab.experiments.moe import window_violation

    cfg = dict(arch=arch, steps=300, batch=8, update_rate=1e-2, n_group=2 if arch == "deepseek_v3" else 1)
    runs = {b: run("moe_hf", balancer=b, **cfg) for b in ("none", "aux_free_bias", "switch_aux")}
    vio = {b: window_violation(h, 50) for b, h in runs.items()}
    loss = {b: float(h["loss"][-50:].mean()) for b, h in runs.items()}
    assert vio["none"] > 1.0  # unbalanced: the frequent tokens' experts take over twice their share
    assert vio["aux_free_bias"] < 0.2  # the bias brings every layer close to balance
    assert loss["aux_free_bias"] < loss["switch_aux"] + 0.02  # no worse LM loss than HF's aux loss
    assert runs["aux_free_bias"]["aux_loss"].max() == 0.0 and runs["switch_aux"]["aux_loss"].min() > 0
