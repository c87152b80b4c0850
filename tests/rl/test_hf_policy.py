"""lab.rl.hf: a lab policy over Hugging Face causal LMs, and model="hf(...)" in the RL loop.

Models are built from configs with random weights (or saved to and loaded from a tmp directory
with a tokenizer trained here): no network.
"""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lab.experiments as E  # noqa: E402
from lab.experiments.policy import compatible  # noqa: E402
from lab.registry import available  # noqa: E402
from tests._shared import arithmetic_tokenizer  # noqa: E402
from lab.rl.hf import (  # noqa: E402
    CausalLMPolicy, TokenizedTask, adapters_disabled, config_for, left_pad_mask, policy_for_task, position_ids,
)
from toy_envs.token_tasks import make_task  # noqa: E402

ARCHS = ["gpt2", "llama", "qwen2", "mistral"]
TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
TINY_SPEC = "hf(arch='qwen2', hidden_size=16, num_hidden_layers=1, num_attention_heads=2)"
SMOKE = dict(task="arithmetic(max_operand=4)", model=TINY_SPEC, steps=2, n_prompts=4, group_size=4,
             epochs=2, minibatches=2, eval_prompts=4, lr=0.01)


def _task():
    return make_task("arithmetic", max_operand=4)


def _policy(arch="llama", seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    return policy_for_task(_task(), arch=arch, generator=g, **{**TINY, "hidden_size": 32, **kwargs})


def _naive(policy, prompts, responses, temperature=1.0):
    """Reference: the model's own full logits (B, L, V), log-softmax at once, HF's position ids."""
    mask = torch.cat([left_pad_mask(prompts, policy.pad_id).long(), torch.ones_like(responses)], 1)
    ids = torch.cat([prompts, responses], 1)
    logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    logp = torch.log_softmax(logits[:, prompts.shape[1] - 1:-1].float() / temperature, -1)
    return logp.gather(-1, responses[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_and_scoring_agree_with_the_models_own_logits(arch):
    # generate (KV cache, one token per step) and score (one pass, chunked from hidden states) give
    # the log-probs and entropies of the model's full logits; the first PPO ratio is then 1
    policy = _policy(arch)
    g = torch.Generator().manual_seed(1)
    prompts = _task().sample_prompts(6, g)
    gen = policy.generate(prompts, 3, temperature=0.8, generator=g)
    scored = policy.score(prompts, gen.tokens, 0.8)
    lp_ref, ent_ref = _naive(policy, prompts, gen.tokens, 0.8)
    m = gen.mask
    assert torch.allclose(gen.logprobs[m], lp_ref[m], atol=1e-5)
    assert torch.allclose(gen.entropy[m], ent_ref[m], atol=1e-5)
    assert torch.allclose(scored.logprobs, lp_ref, atol=1e-5) and torch.allclose(scored.entropy, ent_ref, atol=1e-5)
    # gradients of log-probs and entropies equal the naive path's
    w = torch.randn(scored.logprobs.shape, generator=g)
    params = [p for p in policy.parameters() if p.requires_grad]
    for ours, ref in ((scored.logprobs, lp_ref), (scored.entropy, ent_ref)):
        ga = torch.autograd.grad((ours * w).sum(), params, retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad((ref * w).sum(), params, retain_graph=True, allow_unused=True)
        for a, b in zip(ga, gb):
            assert (a is None) == (b is None)
            assert a is None or torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_decoding_with_the_cache_equals_hf_generate_on_left_padded_prompts(arch):
    # prompts of different lengths, left-padded: the lab loop over the KV cache picks the tokens
    # transformers' own generate picks (greedy), and no prompt depends on its padding
    policy = _policy(arch, seed=3)
    task = _task()
    g = torch.Generator().manual_seed(2)
    full = task.sample_prompts(4, g)                                          # (4, 4)
    prompts = full.clone()
    prompts[0, :2] = task.pad_id                                              # two shorter prompts
    prompts[2, :1] = task.pad_id
    ours = policy.generate(prompts, 5, temperature=0.0, generator=g, eos_id=-1)   # no early stop
    attention = left_pad_mask(prompts, task.pad_id).long()
    theirs = policy.model.generate(input_ids=prompts, attention_mask=attention, max_new_tokens=5, do_sample=False,
                                   pad_token_id=task.pad_id, eos_token_id=None)[:, prompts.shape[1]:]
    assert torch.equal(ours.tokens, theirs)
    # the shorter prompts alone (no padding) give the same tokens and log-probs
    alone = policy.generate(full[2:3, 1:], 5, temperature=0.0, eos_id=-1)
    assert torch.equal(alone.tokens[0], ours.tokens[2])
    assert torch.allclose(alone.logprobs[0], ours.logprobs[2], atol=1e-5)


def test_padding_changes_nothing_and_the_mask_is_what_makes_it_so():
    policy = _policy("qwen2", seed=4)
    g = torch.Generator().manual_seed(0)
    prompts = _task().sample_prompts(3, g)
    responses = torch.randint(2, 14, (3, 3), generator=g)
    base = policy.score(prompts, responses).logprobs
    padded = torch.cat([torch.zeros(3, 5, dtype=torch.long), prompts], 1)
    assert torch.allclose(policy.score(padded, responses).logprobs, base, atol=1e-5)
    # attending to the padding (an all-ones mask) changes the log-probs: the mask does the work
    ones = torch.ones_like(padded)
    assert (policy.score(padded, responses, attention_mask=ones).logprobs - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="padding"):
        policy.score(torch.zeros(1, 3, dtype=torch.long), responses[:1])


def test_scoring_holds_no_full_logits_tensor():
    # every tensor autograd saves for backward is at most one chunk of logits (B, C, V), C < T:
    # the (B, T, V) log-softmax of the naive path is never kept
    vocab = 512
    model = transformers.LlamaForCausalLM(config_for("llama", vocab_size=vocab, pad_token_id=0, eos_token_id=1,
                                                     **TINY))
    policy = CausalLMPolicy(model, chunk_size=4)
    g = torch.Generator().manual_seed(0)
    prompts, responses = torch.randint(2, vocab, (2, 3), generator=g), torch.randint(2, vocab, (2, 16), generator=g)
    saved = []

    def pack(t):
        saved.append(t.numel() if t.dim() and t.shape[-1] == vocab else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scored = policy.score(prompts, responses)
    assert max(saved) == 0            # the chunks save hidden states only and recompute their logits
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _naive(policy, prompts, responses)
    assert max(saved) >= 2 * 16 * vocab                                       # the naive path does
    assert torch.allclose(scored.logprobs, _naive(policy, prompts, responses)[0], atol=1e-5)


def test_reference_is_a_frozen_copy_and_training_leaves_it():
    policy = _policy("llama", seed=5)
    reference = policy.reference()
    assert reference is not policy and reference.model is not policy.model
    assert not any(p.requires_grad for p in reference.parameters())
    trainable = {id(p) for p in policy.parameters()}
    assert not any(id(p) in trainable for p in reference.parameters())     # π_ref is no parameter of π_θ
    g = torch.Generator().manual_seed(0)
    prompts = _task().sample_prompts(4, g)
    responses = policy.generate(prompts, 3, generator=g).tokens
    before = reference.score(prompts, responses).logprobs.detach()
    assert torch.allclose(policy.score(prompts, responses).logprobs, before, atol=1e-6)
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    policy.score(prompts, responses).logprobs.sum().backward()
    opt.step()
    assert (policy.score(prompts, responses).logprobs - before).abs().max() > 1e-3
    assert torch.equal(reference.score(prompts, responses).logprobs, before)
    # an explicit reference model is used as given
    other = _policy("llama", seed=6)
    explicit = CausalLMPolicy(policy.model, ref_model=other.model).reference()
    assert explicit.model is other.model


def test_lora_reference_is_the_model_with_its_adapters_off():
    policy = _policy("qwen2", seed=7, lora=4)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)                       # only the adapters train
    assert "lm_head" not in " ".join(n for n, _ in policy.model.named_modules() if "lora" in n)
    g = torch.Generator().manual_seed(0)
    prompts = _task().sample_prompts(4, g)
    responses = policy.generate(prompts, 3, generator=g).tokens
    reference = policy.reference()
    before = reference.score(prompts, responses).logprobs
    torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0).zero_grad()
    loss = -policy.score(prompts, responses).logprobs.sum()
    loss.backward()
    for p in policy.parameters():
        if p.requires_grad:
            p.data -= 1.0 * p.grad
    moved = policy.score(prompts, responses).logprobs
    assert (moved - before).abs().max() > 1e-3
    assert torch.allclose(reference.score(prompts, responses).logprobs, before, atol=1e-6)   # adapters off
    with adapters_disabled(policy.model):
        assert torch.allclose(policy.score(prompts, responses).logprobs, before, atol=1e-6)
    assert torch.allclose(policy.score(prompts, responses).logprobs, moved)   # switched back on


def test_gradient_checkpointing_and_value_head():
    plain = _policy("llama", seed=8, value_head=True)
    ckpt = _policy("llama", seed=8, value_head=True, gradient_checkpointing=True)
    assert getattr(ckpt.model, "is_activation_checkpointing", None) or ckpt.model.is_gradient_checkpointing
    g = torch.Generator().manual_seed(0)
    prompts = _task().sample_prompts(3, g)
    responses = torch.randint(2, 14, (3, 3), generator=g)
    grads = []
    for policy in (plain, ckpt):
        policy.train()
        s = policy.score(prompts, responses)
        assert s.values.shape == (3, 3)
        (s.logprobs.sum() + s.values.sum()).backward()
        grads.append([p.grad.clone() for p in policy.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert plain.value_head.weight.grad.abs().sum() > 0


def test_bad_specs_raise_clear_errors():
    task = _task()
    with pytest.raises(ValueError, match="arch"):
        policy_for_task(task, arch="bert")
    with pytest.raises(ValueError, match="exactly one"):
        policy_for_task(task)
    with pytest.raises(TypeError, match="hidden_sise"):
        policy_for_task(task, arch="llama", hidden_sise=8)
    with pytest.raises(TypeError, match="vocab_size"):
        policy_for_task(task, arch="llama", vocab_size=100)
    with pytest.raises(TypeError, match="lora"):
        policy_for_task(task, arch="llama", lora=2.5, **TINY)
    with pytest.raises(ValueError, match="dtype"):
        policy_for_task(task, arch="llama", dtype="int8")
    with pytest.raises(TypeError, match="causal LM"):
        CausalLMPolicy(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="chunk_size"):
        CausalLMPolicy(_policy().model, chunk_size=0)
    with pytest.raises(TypeError, match="takes no arguments"):
        E.run("policy_optimization", model="transformer(d_model=8)", steps=1)


# ---- the RL loop ---------------------------------------------------------------------------
def test_done_when_command_config_runs_and_lora_trains_only_adapters():
    h = E.run("policy_optimization", model="hf(arch='qwen2', hidden_size=64, num_hidden_layers=2)", steps=5)
    assert len(h["reward"]) == 5 and all(math.isfinite(x) for x in h["loss"])
    assert h["kl"][0] == pytest.approx(0.0, abs=1e-6)          # π_old = π_ref before the first update
    h = E.run("policy_optimization", **{**SMOKE, "model": TINY_SPEC[:-1] + ", lora='lora(rank=2, alpha=4)')"})
    assert h["kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert max(h["grad_norm"]) > 0


LOOP_SWITCHES = ([{"advantage": a} for a in compatible("advantage")]
                 + [{"loss": loss} for loss in compatible("policy_loss")]
                 + [{"reward_shaping": "kl_penalty(beta=0.05)"}, {"reward_shaping": "adaptive_kl_penalty"},
                    {"token_selector": "d3s"}, {"token_sampler": "adaptive_temperature"},
                    {"demonstrations": True, "loss": "grao"}, {"demonstrations": True, "loss": "hpt"},
                    {"entropy_coef": 0.05}, {"advantage": "gae", "loss": "ppo(vf_coef=0.5)"},
                    {"reward_shaping": "overlong_penalty"}, {"token_selector": "overlong_filter"},
                    {"group_filter": "dynamic_sampling(max_rounds=2)"}, {"group_filter": "difficulty_filter"}])


def test_the_switch_list_covers_every_reward_shaping_and_sampler_the_loop_accepts():
    # the loop takes a "reward" as shaping and a "sampler" as selector or token sampler when it fits;
    # every registered one that runs on the tabular policy is in LOOP_SWITCHES
    listed = {(k, v.split("(")[0]) for s in LOOP_SWITCHES for k, v in s.items() if isinstance(v, str)}
    base = dict(steps=1, n_prompts=2, group_size=2, task="arithmetic(max_operand=4)")
    for key, kind in (("reward_shaping", "reward"), ("token_selector", "sampler"), ("token_sampler", "sampler"),
                      ("group_filter", "sampler")):
        for name in available(kind):
            try:
                E.run("policy_optimization", **base, **{key: name})
            except (TypeError, ValueError):
                continue
            assert (key, name) in listed, (key, name)


@pytest.mark.parametrize("switch", LOOP_SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_estimator_loss_shaping_and_sampler_runs_on_an_hf_model(switch):
    h = E.run("policy_optimization", **{**SMOKE, **switch})
    assert len(h["reward"]) == 2
    for key in ("loss", "kl", "entropy", "grad_norm"):
        assert all(math.isfinite(x) for x in h[key]), key
    if switch == {"loss": "gtpo"}:
        # GTPO's (code) entropy filter drops every completion with mean entropy > 0.7 nats; a random
        # model's is about ln 14 = 2.6, so nothing is trained: documented in lab/rl/gtpo.py
        assert h["gtpo/filtered_frac"].tolist() == [1.0, 1.0] and max(h["grad_norm"]) == 0
    else:
        assert max(h["grad_norm"]) > 0                             # an update reached the model
    assert 0.0 <= h["greedy_accuracy"][-1] <= 1.0


def test_the_hf_loop_creates_no_tensor_off_its_device():
    with torch.device("meta"):
        E.run("policy_optimization", **{**SMOKE, "model": TINY_SPEC.replace("qwen2", "gpt2"),
                                        "advantage": "gae", "loss": "ppo", "device": "cpu"})


# ---- a local directory with a tokenizer ----------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A Llama model and a BPE tokenizer trained here on arithmetic text, saved with save_pretrained."""
    tokenizer = arithmetic_tokenizer()
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer.save_pretrained(path)
    config = config_for("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **TINY)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def test_a_task_through_a_tokenizer_scores_text(model_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    task = _task()
    view = TokenizedTask(task, tokenizer)
    g = torch.Generator().manual_seed(0)
    task_prompts = task.sample_prompts(16, g)
    prompts = view.encode_prompts(task_prompts)
    lengths = left_pad_mask(prompts, view.pad_id).sum(-1)
    assert lengths.min() < lengths.max()                     # BPE merges: prompts need left padding
    back, _ = view.to_task(prompts, prompts[:, :0])
    assert torch.equal(back, task_prompts)
    # the reference answers, as tokenizer ids, earn reward 1; a wrong digit earns less; eos matters
    answers = view.targets(prompts)
    width = max(map(len, answers))
    responses = torch.tensor([a + [view.pad_id] * (width - len(a)) for a in answers])
    assert view.reward(prompts, responses).tolist() == [1.0] * 16 and view.correct(prompts, responses).all()
    wrong = torch.tensor([tokenizer("9", add_special_tokens=False)["input_ids"] + [view.eos_id]] * 16)
    expected = task.reward(task_prompts, torch.tensor([[11, 1]] * 16))           # "9<eos>" in task tokens
    assert torch.equal(view.reward(prompts, wrong), expected)
    assert view.parse("1 2x=") == [3, 4, task.pad_id, 13]                      # spaces dropped, x unknown
    assert view.decode(responses[0]) == task.decode(task.targets(task_prompts[:1])[0][:-1])


def test_the_loop_runs_a_local_model_with_its_tokenizer(model_dir):
    h = E.run("policy_optimization", **{**SMOKE, "model": f"hf(path={model_dir!r}, lora=2)",
                                        "demonstrations": True, "loss": "grao"})
    assert all(math.isfinite(x) for x in h["loss"]) and max(h["grad_norm"]) > 0
    texts = h.artifacts["last_batch"]["texts"]
    assert len(texts) == 16 and all("+" in t and "=" in t for t in texts)
    with pytest.raises(TypeError, match="hidden_size"):
        E.run("policy_optimization", **{**SMOKE, "model": f"hf(path={model_dir!r}, hidden_size=8)"})
