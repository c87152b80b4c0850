"""lab.integrations.trl: lab estimators and losses inside TRL's GRPOTrainer.

A tiny random-init Llama and a BPE tokenizer trained here are saved to a tmp directory (TRL loads
its reference model from the path); the data set is a small in-memory list of additions. No network.
"""
import math

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from lab.integrations.trl import LabGRPOTrainer  # noqa: E402
from lab.rl.core import make_fn  # noqa: E402
from lab.rl.hf import config_for  # noqa: E402
from tests._shared import arithmetic_tokenizer  # noqa: E402

PROMPTS = [f"{a}+{b}=" for a in range(5) for b in range(5)]
ANSWERS = [str(a + b) for a in range(5) for b in range(5)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = arithmetic_tokenizer()
    config = config_for("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, hidden_size=32,
                        num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trl_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def reward(completions, answer, **kwargs):
    """1 for the exact sum, 0.1 for the right first digit (sparse: 0 for a random model)."""
    return [float(c.strip() == a) + 0.1 * float(c.strip()[:1] == a[:1]) for c, a in zip(completions, answer)]


def dense_reward(completions, answer, **kwargs):
    """``reward`` plus the share of digits in the completion (every completion scores something)."""
    return [r + sum(ch.isdigit() for ch in c) / max(1, len(c))
            for r, c in zip(reward(completions, answer), completions)]


def _args(tmp_path, **changes):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
                max_steps=2, learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                beta=0.04, seed=0, disable_tqdm=True)
    return trl.GRPOConfig(**{**base, **changes})


def _trainer(cls, model_dir, tmp_path, extra=None, reward_funcs=reward, **changes):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "answer": ANSWERS})
    return cls(model=model_dir, reward_funcs=reward_funcs, args=_args(tmp_path, **changes), train_dataset=data,
               processing_class=tokenizer, **(extra or {}))


def test_ngrpo_and_dapo_train_inside_trl(model_dir, tmp_path):
    # NGRPO gives an all-wrong group a negative advantage (−0.447 for G = 4, r_max = 1) where TRL's
    # GRPO gives 0: the lab estimator replaced TRL's, its metrics are logged, and the step moves the model
    trainer = _trainer(LabGRPOTrainer, model_dir, tmp_path, extra={"advantage": "ngrpo", "loss": "dapo"})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "lab/adv_mean" in entry]
    assert len(logs) == 2
    first = logs[0]
    assert first["frac_reward_zero_std"] == 1.0                # every group all-wrong at random init ...
    assert first["lab/adv_mean"] == pytest.approx(-1 / math.sqrt(5), abs=1e-3)   # ... yet NGRPO pushes down
    assert first["grad_norm"] > 0 and all(math.isfinite(e["loss"]) for e in logs)
    assert any((a - b).abs().max() > 0 for a, b in zip(trainer.model.parameters(), before))
    assert {"lab/clip_frac", "lab/kl", "lab/num_tokens", "kl", "entropy"} <= set(first)


def test_advantages_match_trls_own(model_dir, tmp_path):
    # the same seed, model and data: TRL's group-normalized advantages (std unbiased + 1e-4) are the
    # lab's grpo(eps=1e-4); TRL's scale_rewards="none" is the lab's dr_grpo (centred only)
    for trl_scale, lab_spec in (("group", "grpo(eps=1e-4)"), ("none", "dr_grpo")):
        ours = _trainer(LabGRPOTrainer, model_dir, tmp_path, extra={"advantage": lab_spec}, max_steps=1,
                        scale_rewards=trl_scale, reward_funcs=dense_reward)
        ours.train()                                      # each constructor seeds the RNGs with args.seed
        theirs = _trainer(trl.GRPOTrainer, model_dir, tmp_path, max_steps=1, scale_rewards=trl_scale,
                          reward_funcs=dense_reward)
        theirs.train()
        assert list(ours._logs["completion"]) == list(theirs._logs["completion"])      # same rollouts
        a, b = torch.tensor(list(ours._logs["advantages"])), torch.tensor(list(theirs._logs["advantages"]))
        assert torch.allclose(a, b, atol=1e-5), (trl_scale, a, b)
        assert a.abs().max() > 0


# ---- the loss: TRL's loss_type against the lab's spec on identical inputs ---------------------
TRL_EQUIVALENTS = [
    ("grpo", "grpo", "window"),
    ("dr_grpo", "dr_grpo", "window"),
    ("dapo", "dapo", "window"),
    # TRL's "bnpo" is a token mean over the micro-batch (a normalization, not the BNPO paper's
    # Beta-normalized advantages, which are advantage="bnpo" here): grpo(agg='token_mean') per micro-batch
    ("bnpo", "grpo(agg='token_mean')", "micro_batch"),
]


def _inputs(trainer, generator):
    """A micro-batch as TRL builds it: left-padded prompts, right-padded completions of several
    lengths, off-policy old log-probs (some ratios clipped), reference log-probs, advantages."""
    tok = trainer.processing_class
    prompts = [tok(p)["input_ids"] for p in PROMPTS[:6]]
    P = max(map(len, prompts))
    prompt_ids = torch.tensor([[tok.pad_token_id] * (P - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    C = trainer.max_completion_length - 1                # every completion ended before the limit
    completion_ids = torch.randint(3, len(tok), (6, C), generator=generator)
    lengths = torch.tensor([3, 2, 3, 1, 1, 3])
    completion_mask = (torch.arange(C)[None] < lengths[:, None]).long()
    completion_ids[completion_mask == 0] = tok.pad_token_id
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), C)
    old = logps + 0.3 * torch.randn(logps.shape, generator=generator, dtype=logps.dtype)
    ref = logps + 0.2 * torch.randn(logps.shape, generator=generator, dtype=logps.dtype)
    advantages = torch.randn(6, generator=generator, dtype=logps.dtype)
    # the generation batch held 2 micro-batches (steps_per_generation = gradient accumulation = 2);
    # the other micro-batch had 9 loss tokens, so the window token count differs from 2 × local
    num_items = completion_mask.sum() + 9
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
            "ref_per_token_logps": ref, "num_items_in_batch": num_items}


@pytest.fixture(scope="module")
def pair(model_dir, tmp_path_factory):
    """A TRL GRPOTrainer and a LabGRPOTrainer on identical float64 copies of the model."""
    out = tmp_path_factory.mktemp("pair")
    # use_bias_correction_kl=False: TRL's default multiplies the k3 KL by the ratio ρ (DeepSeek-V3.2);
    # the lab's losses use the GRPO paper's plain k3 term
    common = dict(gradient_accumulation_steps=2, steps_per_generation=2, epsilon=0.2, epsilon_high=0.28,
                  model_init_kwargs={"dtype": torch.float64}, use_bias_correction_kl=False)
    theirs = _trainer(trl.GRPOTrainer, model_dir, out, **common)
    ours = _trainer(LabGRPOTrainer, model_dir, out, **common)
    for t in (theirs, ours):
        t.model.train()
        t.current_gradient_accumulation_steps = 2
        # TRL's fused LM head returns float32 log-probs; both trainers get the same float64 ones, so the
        # comparison is of the losses alone, to float64 precision
        t._get_per_token_logps_and_entropies = _float64_logps.__get__(t)
    return theirs, ours


def _float64_logps(self, model, input_ids, attention_mask, logits_to_keep, compute_entropy=False, **kwargs):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -logits_to_keep - 1:-1]
    logp = torch.log_softmax(logits.double() / self.temperature, dim=-1)
    token = logp.gather(-1, input_ids[:, -logits_to_keep:, None])[..., 0]
    entropy = -(logp.exp() * logp).sum(-1) if compute_entropy else None
    return token, entropy, None


@pytest.mark.parametrize("loss_type,spec,normalize", TRL_EQUIVALENTS)
def test_trl_loss_types_equal_the_lab_specs_on_identical_inputs(pair, loss_type, spec, normalize):
    theirs, ours = pair
    assert next(theirs.model.parameters()).dtype == torch.float64
    theirs.loss_type = loss_type
    ours.lab_loss, ours.lab_normalize = make_fn("policy_loss", spec), normalize
    inputs = _inputs(theirs, torch.Generator().manual_seed(0))
    results = []
    for trainer in (theirs, ours):
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
    (loss_t, grads_t), (loss_l, grads_l) = results
    assert loss_l.item() == pytest.approx(loss_t.item(), rel=1e-10, abs=1e-12)
    for gt, gl in zip(grads_t, grads_l):
        assert torch.allclose(gt, gl, rtol=1e-9, atol=1e-12)
    assert theirs._metrics["train"]["clip_ratio/region_mean"][-1] > 0        # the inputs do clip


def test_trls_bnpo_is_not_the_window_token_mean(pair):
    # dapo divides by the window's tokens, bnpo by the micro-batch's: with unequal micro-batches the
    # two differ, so "bnpo" needs normalize="micro_batch" (and is no Beta normalization at all)
    theirs, ours = pair
    theirs.loss_type = "bnpo"
    ours.lab_loss, ours.lab_normalize = make_fn("policy_loss", "grpo(agg='token_mean')"), "window"
    inputs = _inputs(theirs, torch.Generator().manual_seed(1))
    a = theirs._compute_loss(theirs.model, inputs).item()
    b = ours._compute_loss(ours.model, inputs).item()
    assert abs(a - b) > 1e-3 * abs(a)


def test_refused_settings_and_specs(model_dir, tmp_path):
    with pytest.raises(ValueError, match="importance_sampling_level"):
        _trainer(LabGRPOTrainer, model_dir, tmp_path, importance_sampling_level="sequence")
    with pytest.raises(TypeError, match="values"):
        _trainer(LabGRPOTrainer, model_dir, tmp_path, extra={"advantage": "gae"})
    with pytest.raises(ValueError, match="beta"):
        _trainer(LabGRPOTrainer, model_dir, tmp_path, extra={"loss": "grpo(beta=0.1)"}, beta=0.0)
    with pytest.raises(ValueError, match="normalize"):
        _trainer(LabGRPOTrainer, model_dir, tmp_path, extra={"normalize": "global"})
    with pytest.raises(KeyError, match="grpo"):
        _trainer(LabGRPOTrainer, model_dir, tmp_path, extra={"loss": "no_such_loss"})
