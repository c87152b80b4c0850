"""From toy to real model: what changes and what does not when the policy is a Hugging Face LM.

The RL loop (:mod:`lab.experiments.policy`) takes the policy by spec: ``"tabular"`` (a softmax
table), ``"transformer"`` (the lab's tiny causal LM) or ``"hf(arch='qwen2', ...)"`` (a
``transformers`` model wrapped by :class:`lab.rl.hf.CausalLMPolicy`). The advantage estimator and
the policy loss see the same tensors from all three, ``logprobs``, ``old_logprobs``, ``advantages``,
``mask`` (B, T), so the same spec strings run unchanged. What changes is how the log-probs are
made, and three things a real model brings:

- **padding**: prompts of different lengths are left-padded; the attention mask must hide the pads
  and the position ids must skip them (GPT-2's learned absolute positions notice a shift; rotary
  positions, Llama/Qwen2/Mistral, are shift-invariant);
- **dropout**: sampling runs in eval mode and the update in train mode, so a model with active
  dropout scores different log-probs than it sampled, and the first PPO ratio is no longer 1;
- **memory**: the logits of a response are (B, T, V) with V ≈ 32k–150k; computed at once (and kept
  for backward) they dominate the update's memory, computed a chunk of positions at a time from the
  hidden states (``lab.rl.logprobs``) they are never held.

Experiments: :func:`same_spec_three_models` (one spec, three policies, a ``Runs``),
``padding_drift`` and ``logits_memory`` (registered); the lesson's claims are in ``CLAIMS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lab import progress
from lab.checks import check_choice, check_int
from lab.claims import Claim
from lab.experiments._base import experiment, resolve_device, run
from lab.history import History, Runs

HF_TINY = "hf(arch='qwen2', hidden_size=32, num_hidden_layers=2, num_attention_heads=4)"
MODELS = {"tabular": "tabular", "transformer": "transformer", "hf": HF_TINY}
"""The three policies of the lesson (labels -> ``PolicyConfig.model`` specs)."""
LR = {"tabular": 0.1, "transformer": 0.01, "hf": 0.01}
"""Adam step size of each: the table's logits move freely, the networks' weights need smaller steps."""
MASKS = ("mask+positions", "mask", "none")


# ---- one spec, three policies -----------------------------------------------------------------
@dataclass(frozen=True)
class ThreeModelsConfig:
    """Config of :func:`same_spec_three_models`."""

    advantage: str = "grpo"  # advantage estimator spec, the same for the three policies
    loss: str = "grpo"  # policy loss spec, the same for the three policies
    task: str = "token_bandit"  # token task spec
    steps: int = 30  # rollout + update iterations
    n_prompts: int = 4  # prompts per rollout
    group_size: int = 8  # G responses per prompt
    seed: int = 0  # seed of each run
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def same_spec_three_models(cfg: ThreeModelsConfig) -> Runs:
    """``policy_optimization`` with one (advantage, loss) pair on the tabular policy, the tiny
    transformer and a random-init Qwen2, each at its own learning rate (:data:`LR`)."""
    return Runs({label: run("policy_optimization", model=spec, lr=LR[label], advantage=cfg.advantage,
                            loss=cfg.loss, task=cfg.task, steps=cfg.steps, n_prompts=cfg.n_prompts,
                            group_size=cfg.group_size, seed=cfg.seed, device=cfg.device, eval_prompts=16)
                 for label, spec in MODELS.items()})


# ---- padding --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaddingConfig:
    """Config of ``padding_drift``."""

    arch: str = "gpt2"  # "gpt2" (learned absolute positions) or "llama", "qwen2", "mistral" (rotary)
    mask: str = "mask+positions"  # what hides the pads: "mask+positions" (the lab's), "mask" (attention mask only), "none"
    max_pad: int = 6  # left-pad every prompt with 0 .. max_pad pad tokens
    n_prompts: int = 8  # prompts (with one sampled response each)
    seed: int = 0  # seed of the random-init model and the samples
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _drift_plot(history: History):
    from lab.viz import curves

    return curves(history, list(MASKS), title="max |Δ log-prob| of the responses when the prompt is left-padded",
                  log_y=True)


@experiment("padding_drift", PaddingConfig, paper="RoFormer: Enhanced Transformer with Rotary Position Embedding",
            arxiv="2104.09864", summary="Left padding against the attention mask and position ids: drift of a prompt's log-probs",
            plot=_drift_plot, smoke={"max_pad": 1, "n_prompts": 2})
def padding_drift(cfg: PaddingConfig) -> History:
    """Row k: max |ℓ(padded by k) − ℓ(unpadded)| over the response tokens, three ways of padding.

    ``mask+positions`` is :meth:`CausalLMPolicy.score` (mask and shifted position ids), ``mask``
    passes only the attention mask to the model (its default positions 0..L−1 then include the
    pads), ``none`` lets the prompt attend to its pads. ``drift`` is the configured way's.
    """
    from lab.rl.hf import left_pad_mask, policy_for_task
    from toy_envs.token_tasks import make_task

    check_choice("mask", cfg.mask, MASKS)
    check_int("max_pad", cfg.max_pad, minimum=0)
    check_int("n_prompts", cfg.n_prompts, minimum=1)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task = make_task("arithmetic", max_operand=4)
    policy = policy_for_task(task, arch=cfg.arch, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             generator=generator, device=dev).eval()
    prompts = task.sample_prompts(cfg.n_prompts, generator)
    responses = policy.generate(prompts, task.max_new_tokens, 1.0, generator, eos_id=-1).tokens
    P = prompts.shape[1]

    def logprobs(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = policy.model(input_ids=ids, attention_mask=mask).logits[:, -responses.shape[1] - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, responses[..., None])[..., 0]      # (B, T)

    history = History(meta={"arch": cfg.arch, "mask": cfg.mask})
    with torch.no_grad():
        base = policy.score(prompts, responses).logprobs
        for k in range(cfg.max_pad + 1):
            pads = torch.full((prompts.shape[0], k), task.pad_id, dtype=torch.long, device=dev)
            ids = torch.cat([pads, prompts, responses], 1)
            mask = torch.cat([left_pad_mask(torch.cat([pads, prompts], 1), task.pad_id).long(),
                              torch.ones_like(responses)], 1)
            drift = {"mask+positions": policy.score(torch.cat([pads, prompts], 1), responses).logprobs,
                     "mask": logprobs(ids, mask),
                     "none": logprobs(ids, torch.ones_like(mask))}    # pads attended
            row = {name: float((lp - base).abs().max()) for name, lp in drift.items()}
            history.append(k, drift=row[cfg.mask], prompt_len=float(P + k), **row)
    return history


# ---- memory ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogitsMemoryConfig:
    """Config of ``logits_memory``."""

    vocab_size: int = 32000  # V: real tokenizers have 32k-150k tokens, the toy tasks 14
    hidden_size: int = 64  # d of the random-init Llama
    batch: int = 4  # B responses
    max_len: int = 64  # responses of T = 8, 16, ..., max_len tokens
    chunk_size: int = 8  # positions per chunk of the chunked path
    seed: int = 0  # seed of the random-init model and the tokens
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _memory_plot(history: History):
    from lab.viz import curves

    return curves(history, ["full_logits_mib", "chunked_mib"],
                  title="MiB kept for backward by scoring a response of T tokens")


def _saved_mib(fn, parameters) -> float:
    """MiB of the activations autograd saves for backward while ``fn()`` runs (each storage once;
    the ``parameters``, which backward also reads, are not counted: they exist either way)."""
    weights = {p.untyped_storage().data_ptr() for p in parameters}
    seen: dict[Any, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2 ** 20


@experiment("logits_memory", LogitsMemoryConfig, paper="Cut Your Losses in Large-Vocabulary Language Models",
            arxiv="2411.09009", summary="Bytes kept for backward when scoring a response: full (B, T, V) logits vs chunks",
            plot=_memory_plot, smoke={"vocab_size": 64, "max_len": 8})
def logits_memory(cfg: LogitsMemoryConfig) -> History:
    """Row T: MiB of activations autograd keeps for backward while a random-init Llama (2 layers, width d)
    scores B responses of T tokens with gradient, through the full logits (``model(...).logits``,
    ``log_softmax``, ``gather``) and through :meth:`CausalLMPolicy.score` (chunks of
    ``chunk_size`` positions, logits recomputed in backward)."""
    import transformers

    from lab.rl.hf import CausalLMPolicy, config_for

    for name in ("vocab_size", "hidden_size", "batch", "max_len", "chunk_size"):
        check_int(name, getattr(cfg, name), minimum=2 if name == "vocab_size" else 1)
    dev = resolve_device(cfg.device)
    config = config_for("llama", vocab_size=cfg.vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=None,
                        hidden_size=cfg.hidden_size, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=cfg.max_len + 8)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.device(dev):
        torch.manual_seed(cfg.seed)
        model = transformers.LlamaForCausalLM(config)
    policy = CausalLMPolicy(model, ref_model=model, chunk_size=cfg.chunk_size)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    history = History(meta={"vocab_size": cfg.vocab_size, "chunk_size": cfg.chunk_size})
    sizes = [8 * 2 ** i for i in range(cfg.max_len.bit_length()) if 8 * 2 ** i <= cfg.max_len]
    # one row per measured size, written as soon as it is measured: a live panel draws the
    # sizes measured so far (progress hands it the History)
    for T in progress.track(sizes, desc="response lengths", history=history):
        prompts = torch.randint(2, cfg.vocab_size, (cfg.batch, 4), generator=generator, device=dev)
        responses = torch.randint(2, cfg.vocab_size, (cfg.batch, T), generator=generator, device=dev)
        ids = torch.cat([prompts, responses], 1)

        def full():
            logits = model(input_ids=ids).logits[:, 3:-1].float()                        # (B, T, V)
            return torch.log_softmax(logits, -1).gather(-1, responses[..., None])

        full_mib = _saved_mib(full, model.parameters())
        chunked_mib = _saved_mib(lambda: policy.score(prompts, responses), model.parameters())
        history.append(T, full_logits_mib=full_mib, chunked_mib=chunked_mib, ratio=full_mib / chunked_mib,
                       logits_mib=cfg.batch * T * cfg.vocab_size * 4 / 2 ** 20)
    return history


# ---- the lesson's claims --------------------------------------------------------------------
def _all_learn(runs: Runs) -> bool:
    return all(h["accuracy"][-5:].mean() > h["accuracy"][:5].mean() + 0.15 for h in runs.values())


def _first_ratio_is_one(h: History) -> bool:
    return max(abs(h["ratio_max"] - 1.0).max(), abs(h["ratio_min"] - 1.0).max()) < 1e-4


GPT2_TINY = "hf(arch='gpt2', hidden_size=32, num_hidden_layers=2, num_attention_heads=4{})"

CLAIMS = [
    Claim(
        notebook="17_from_toy_to_real_model", panel="three_models",
        text="The same advantage and loss specs train all three policies unchanged: on the token bandit the "
             "tabular policy, the tiny transformer and a random-init Qwen2 each pick the best arm at least "
             "15 points more often after 30 GRPO steps than at the start.",
        experiment=same_spec_three_models, base=ThreeModelsConfig(),
        config={}, control={"steps": 6},
        holds=_all_learn,
        control_text="6 steps: too few updates for any of the three to move",
    ),
    Claim(
        notebook="17_from_toy_to_real_model", panel="sampling_vs_scoring",
        text="Sampling with the KV cache (one token at a time, eval mode) and scoring in one pass (train mode) "
             "compute the same π on the Hugging Face model: every first update has ratio ρ = 1 (|ρ − 1| < 1e-4), "
             "as on the toys, because the policy switches the model's dropout off.",
        experiment="policy_optimization",
        config={"model": GPT2_TINY.format(""), "task": "arithmetic(max_operand=4)", "steps": 4, "lr": 0.01,
                "eval_prompts": 4},
        control={"model": GPT2_TINY.format(", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, "
                                           "disable_dropout=False")},
        holds=_first_ratio_is_one,
        control_text="GPT-2's dropout (p = 0.1) left on: the update scores a different π than the rollout "
                     "sampled, ρ ≠ 1 before any step",
    ),
    Claim(
        notebook="17_from_toy_to_real_model", panel="padding",
        text="Left padding changes nothing when the attention mask hides the pads and the position ids skip "
             "them: a prompt's response log-probs move by less than 1e-5 with up to 6 pad tokens.",
        experiment="padding_drift", config={}, control={"mask": "none"},
        holds=lambda h: h["drift"].max() < 1e-5,
        control_text="no attention mask: the prompt attends to its pads and its log-probs move",
        name="mask",
    ),
    Claim(
        notebook="17_from_toy_to_real_model", panel="padding",
        text="GPT-2's learned absolute positions need the shifted position ids as well: with the attention "
             "mask alone a padded prompt's log-probs still move (by more than 1e-3).",
        experiment="padding_drift", config={"mask": "mask"}, control={"arch": "llama"},
        holds=lambda h: h["drift"].max() > 1e-3,
        control_text="Llama's rotary positions depend only on distances, so the mask alone suffices",
        name="positions",
    ),
    Claim(
        notebook="17_from_toy_to_real_model", panel="memory",
        text="With a real vocabulary (V = 32,000) scoring through the full logits keeps more than 5x the bytes "
             "for backward that chunked scoring keeps, which saves only hidden states and recomputes each "
             "chunk's logits.",
        experiment="logits_memory", config={}, control={"vocab_size": 16},
        holds=lambda h: h["ratio"][-1] > 5.0, seed_field=None,
        control_text="the toy's vocabulary (V = 16 < d = 64): the logits are smaller than the hidden states, "
                     "chunking saves nothing",
    ),
]


__all__ = ["ThreeModelsConfig", "PaddingConfig", "LogitsMemoryConfig", "same_spec_three_models", "padding_drift",
           "logits_memory", "CLAIMS", "MODELS", "LR"]
