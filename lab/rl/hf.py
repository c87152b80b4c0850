"""A policy over any Hugging Face causal LM, with the interface the lab's RL loop uses.

:class:`CausalLMPolicy` wraps a ``transformers`` ``PreTrainedModel`` with a causal LM head (GPT-2,
Llama, Qwen2, Mistral, ...) and gives it what :mod:`lab.models.policy` defines for the lab's own
policies, so every advantage estimator, policy loss, reward shaping and sampler runs on it
unchanged::

    generate(prompts (B, P), max_new_tokens, τ, generator, eos_id, pad_id) -> Generation
    score(prompts (B, P), responses (B, T), τ) -> Scored(logprobs (B, T), entropy (B, T), values)
    reference() -> the frozen π_ref            (a copy, ``ref_model``, or the adapters switched off)

Prompts are **left-padded**: the leading ``pad_id`` tokens of a row are padding (or pass an explicit
``attention_mask``). With ``m`` the attention mask of prompt + response, position ids are
``pos_t = (Σ_{s≤t} m_s) − 1`` (clamped at 0), so a padded prompt sees the positions it would have
without padding, and its log-probs do not depend on how much padding the batch needed.

Sampling runs the lab's token loop (:func:`lab.models.policy.generate`: temperature τ, greedy at
τ = 0, a token sampler such as HAPO's adaptive temperature, a ``torch.Generator`` for
reproducibility) over the model's **KV cache**: the prompt is encoded once, then each step feeds
only the newest token, and only the last position's hidden state meets the LM head.

Scoring runs the decoder once over prompt + response and computes the per-token log-probs and
entropies of the response with :func:`lab.rl.logprobs` from the last hidden states ``h`` and the LM
head ``W``, chunk by chunk along the sequence::

    ℓ_t = log softmax(W h_{t−1} / τ)[y_t],   H_t = −Σ_v p_v log p_v        (B, T)

so no (B, T, V) tensor of logits is ever held, in forward or backward (each chunk recomputes its
logits in backward), and the entropy carries its exact gradient for an entropy bonus. Models with
a final logit transform (Gemma's ``final_logit_softcapping``) fall back to the model's own logits,
reduced chunk by chunk. ``gradient_checkpointing=True`` turns on the model's activation
checkpointing (non-reentrant) for the scoring pass.

The reference π_ref (for β·KL, the ``kl`` curve, KL-in-reward shaping): ``ref_model`` when given;
otherwise, when :mod:`lab.peft` adapters are attached, the same model with every adapter switched
off (no second copy of the weights: LoRA's B = 0 at initialization makes that exactly the initial
policy); otherwise a frozen deep copy of the model taken at construction.

:func:`policy_for_task` builds the policy behind ``PolicyConfig.model = "hf(...)"``: a random-init
model from a config (``arch`` in gpt2, llama, qwen2, mistral; the token task's vocabulary, pad and
eos ids become the model's) or ``from_pretrained`` on a local directory with its tokenizer, in which
case the task is seen through the tokenizer (:class:`TokenizedTask`: prompts and answers become
text, rewards are computed on the text). ``lora=`` attaches the lab's PEFT adapters.

Choices where nothing forces one: dropout layers are switched off (as TRL's ``disable_dropout``),
so the sampling and the scoring passes compute the same π; a random-init model's weights are drawn
from the torch RNG seeded by one draw of the run's generator (Hugging Face initializers take no
generator).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import re
from typing import Any, Iterator

import torch
from torch import nn

from lab.checks import check_choice, check_int
from lab.models.policy import Generation, Scored, generate
from lab.rl.token_logprobs import logprobs as chunked_logprobs

ARCHS = {
    "gpt2": "GPT2Config",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
}
"""``arch`` names of :func:`policy_for_task` -> the ``transformers`` config class."""

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
"""Sizes a random-init model gets unless the spec sets them. ``intermediate_size`` defaults to
⌊8d/3⌋ for the gated (SwiGLU) MLPs of Llama, Qwen2 and Mistral: three d×8d/3 matrices hold as many
parameters as GPT-2's two d×4d ones (the LLaMA paper's sizing), so an ``hf(...)`` model of width d
is about the size of the lab's tiny transformer of width d."""


def left_pad_mask(prompts: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, P) bool: False on the leading ``pad_id`` tokens of each row (left padding), else True."""
    return (prompts != pad_id).long().cumsum(-1) > 0


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """pos_t = (Σ_{s≤t} m_s) − 1, clamped at 0: positions that skip the left padding (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Switch every :mod:`lab.peft` adapter of ``model`` off inside the block (restored after)."""
    from lab.peft.core import adapters

    layers = list(adapters(model).values())
    before = [layer.enabled for layer in layers]
    try:
        for layer in layers:
            layer.enabled = False
        yield
    finally:
        for layer, state in zip(layers, before):
            layer.enabled = state


def _is_causal_lm(model: Any) -> bool:
    return isinstance(model, nn.Module) and hasattr(model, "get_output_embeddings") \
        and getattr(model, "base_model", None) is not None and model.base_model is not model


class CausalLMPolicy(nn.Module):
    """A lab policy over a Hugging Face causal LM (see the module docstring).

    Args:
        model: a ``transformers`` ``PreTrainedModel`` with a causal LM head (``base_model`` + an
            ``nn.Linear`` from ``get_output_embeddings()``).
        tokenizer: its tokenizer (supplies pad/eos ids; used by :meth:`task_view` for text tasks).
        ref_model: a frozen reference model; None = adapters off or a frozen copy (module docstring);
            ``model`` itself = the policy is its own reference (a frozen policy).
        chunk_size: positions per chunk of the log-prob computation (None: about 2**24 logits).
        value_head: add a scalar value head ``v = w·h + b`` on the last hidden states (a critic).
        gradient_checkpointing: enable the model's activation checkpointing for scoring.
        pad_id, eos_id: override the tokenizer's / config's ids.
        disable_dropout: set every ``nn.Dropout`` of the model to p = 0 and every attention module's
            ``attention_dropout`` (functional dropout in Llama-style attention) to 0.
        generator: seeds the value head's initialization (on the model's device).
    """

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, ref_model: nn.Module | None = None,
                 chunk_size: int | None = None, value_head: bool = False, gradient_checkpointing: bool = False,
                 pad_id: int | None = None, eos_id: int | None = None, disable_dropout: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not _is_causal_lm(model):
            raise TypeError(f"model must be a Hugging Face causal LM (with base_model and get_output_embeddings), "
                            f"got {type(model).__name__}")
        if ref_model is not None and not _is_causal_lm(ref_model):
            raise TypeError(f"ref_model must be a Hugging Face causal LM, got {type(ref_model).__name__}")
        if chunk_size is not None:
            check_int("chunk_size", chunk_size, minimum=1)
        self.model = model
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        config = model.config
        self.pad_id = _first_int(pad_id, getattr(tokenizer, "pad_token_id", None), config.pad_token_id,
                                 getattr(tokenizer, "eos_token_id", None), config.eos_token_id, name="pad_id")
        self.eos_id = _first_int(eos_id, getattr(tokenizer, "eos_token_id", None), config.eos_token_id,
                                 name="eos_id")
        self.softcap = getattr(config, "final_logit_softcapping", None)
        head = model.get_output_embeddings()
        weight = head.weight
        self.value_head = None
        if value_head:
            self.value_head = nn.Linear(weight.shape[1], 1, device=weight.device, dtype=weight.dtype)
            nn.init.normal_(self.value_head.weight, std=0.02, generator=generator)
            nn.init.zeros_(self.value_head.bias)
        if disable_dropout:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
                if isinstance(getattr(module, "attention_dropout", None), float):
                    module.attention_dropout = 0.0
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):            # transformers >= 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        decoder_args = inspect.signature(model.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in decoder_args else "past_key_values"   # transformers 5 / 4
        from lab.peft.core import adapters

        # π_ref is kept out of the module tree (self.__dict__), so its weights are no parameters of π_θ
        self._ref_is_adapters_off = False
        if ref_model is model:                                   # a frozen policy: its own reference
            ref = self
        elif ref_model is not None:
            frozen = ref_model.requires_grad_(False).eval()
            ref = CausalLMPolicy(frozen, tokenizer=tokenizer, ref_model=frozen, chunk_size=chunk_size,
                                 pad_id=self.pad_id, eos_id=self.eos_id, disable_dropout=disable_dropout)
        elif adapters(model):
            ref, self._ref_is_adapters_off = None, True
        else:
            frozen = copy.deepcopy(model).requires_grad_(False).eval()
            ref = CausalLMPolicy(frozen, tokenizer=tokenizer, ref_model=frozen, chunk_size=chunk_size,
                                 pad_id=self.pad_id, eos_id=self.eos_id, disable_dropout=disable_dropout)
        self.__dict__["_ref"] = ref

    # ---- the model's pieces ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.get_output_embeddings().weight.device

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def get_output_embeddings(self) -> nn.Module:
        """The LM head (so :func:`lab.rl.logprobs` reduces from hidden states)."""
        return self.model.get_output_embeddings()

    def _apply(self, fn, recurse=True):
        # .to(device) / .double() move the reference too, although it is not a submodule
        super()._apply(fn, recurse)
        ref = self.__dict__.get("_ref")
        if ref is not None and ref is not self:
            ref._apply(fn, recurse)
        return self

    def _decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None,
                use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Last hidden states (B, L, d) of the decoder (and the KV cache when ``use_cache``)."""
        past = attention_mask.shape[1] - input_ids.shape[1]
        pos = position_ids(attention_mask)[:, past:]
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                                    use_cache=use_cache, **{self._cache_arg: cache})
        new_cache = None
        if use_cache:
            new_cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out["last_hidden_state"], new_cache

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        z = self.model.get_output_embeddings()(hidden)
        if self.softcap:                                                  # z ← c·tanh(z / c)
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def forward_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) -> (B, L, d) last hidden states (left padding read from ``attention_mask``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._decode(input_ids, attention_mask)[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) -> (B, L, V) logits (the full tensor: for tests and small inputs)."""
        return self._logits(self.forward_hidden(input_ids, attention_mask))

    def prompt_mask(self, prompts: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
        """(B, P) long attention mask of left-padded prompts; every row needs a real token."""
        mask = left_pad_mask(prompts, self.pad_id if pad_id is None else pad_id)
        if prompts.shape[1] and not mask.any(-1).all():
            raise ValueError("every prompt needs at least one token that is not padding")
        return mask.long()

    # ---- sampling --------------------------------------------------------------------------
    def next_logits(self, prompts: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """(B, V) logits of the token after ``prompts`` + ``prefix`` (no cache; :meth:`generate` uses one)."""
        ids = torch.cat([prompts, prefix], dim=1)
        mask = torch.cat([self.prompt_mask(prompts), torch.ones_like(prefix)], dim=1)
        return self._logits(self._decode(ids, mask)[0][:, -1])

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None, eos_id: int | None = None, pad_id: int | None = None,
                 token_sampler: Any = None, attention_mask: torch.Tensor | None = None) -> Generation:
        """Sample responses with a KV cache; see :func:`lab.models.policy.generate` for the outputs.

        ``eos_id``/``pad_id`` default to the policy's; ``attention_mask`` (B, P) overrides the
        left-padding mask read from ``pad_id``.
        """
        pad_id = self.pad_id if pad_id is None else pad_id
        eos_id = self.eos_id if eos_id is None else eos_id
        mask = self.prompt_mask(prompts, pad_id) if attention_mask is None else attention_mask.long()
        state: dict[str, Any] = {"cache": None, "mask": mask}

        def next_logits(prefix: torch.Tensor) -> torch.Tensor:                 # (B, t) -> (B, V)
            if prefix.shape[1] == 0:
                ids = prompts
            else:
                ids = prefix[:, -1:]                                          # only the newest token
                state["mask"] = torch.cat([state["mask"], torch.ones_like(ids)], dim=1)
            hidden, state["cache"] = self._decode(ids, state["mask"], state["cache"], use_cache=True)
            return self._logits(hidden[:, -1])

        return generate(self, prompts, max_new_tokens, temperature, generator, eos_id, pad_id, token_sampler,
                        next_logits=next_logits)

    # ---- scoring ---------------------------------------------------------------------------
    def score(self, prompts: torch.Tensor, responses: torch.Tensor, temperature: float = 1.0,
              attention_mask: torch.Tensor | None = None) -> Scored:
        """Log-probs and entropies (both with grad) of ``responses`` (B, T) after ``prompts`` (B, P),
        under π_τ, and the values when the policy has a value head."""
        if prompts.dim() != 2 or responses.dim() != 2 or prompts.shape[0] != responses.shape[0]:
            raise ValueError(f"prompts (B, P) and responses (B, T) must be 2-D with the same B, got "
                             f"{tuple(prompts.shape)} and {tuple(responses.shape)}")
        P, T = prompts.shape[1], responses.shape[1]
        pmask = self.prompt_mask(prompts) if attention_mask is None else attention_mask.long()
        input_ids = torch.cat([prompts, responses], dim=1)                       # (B, P+T)
        mask = torch.cat([pmask, torch.ones_like(responses)], dim=1)
        hidden = self._decode(input_ids, mask)[0]                                # (B, P+T, d)
        tail_ids, tail = input_ids[:, P - 1:], hidden[:, P - 1:]                 # predicts y_1 .. y_T
        if self.softcap:                                                         # the model's own logits
            logp, entropy = chunked_logprobs(_LogitsOf(self, tail), tail_ids, chunk_size=self.chunk_size,
                                             temperature=temperature)
        else:
            logp, entropy = chunked_logprobs(self, tail_ids, hidden=tail, chunk_size=self.chunk_size,
                                             temperature=temperature)            # (B, T)
        values = None
        if self.value_head is not None:
            values = self.value_head(hidden[:, P - 1:P + T - 1])[..., 0].float()  # V(x, y_<t)
        return Scored(logp, entropy, values)

    # ---- the reference ---------------------------------------------------------------------
    def reference(self) -> Any:
        """The frozen π_ref: an object with ``score`` (see the module docstring)."""
        if self._ref_is_adapters_off:
            return _AdaptersOff(self)
        return self._ref

    def task_view(self, task: Any) -> Any:
        """``task`` as this policy sees it: through the tokenizer when there is one, else as is
        (then the task's vocabulary must fit the model's)."""
        if self.tokenizer is not None:
            return task if isinstance(task, TokenizedTask) else TokenizedTask(task, self.tokenizer)
        if task.vocab_size > self.vocab_size:
            raise ValueError(f"the task has {task.vocab_size} tokens but the model's vocabulary has "
                             f"{self.vocab_size}; give the policy a tokenizer")
        return task


class _LogitsOf(nn.Module):
    """``ids -> logits`` of precomputed hidden states (the chunked log-softmax over given logits)."""

    def __init__(self, policy: CausalLMPolicy, hidden: torch.Tensor):
        super().__init__()
        self.policy, self.hidden = policy, hidden

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.policy._logits(self.hidden)


class _AdaptersOff:
    """π_ref as the policy's own model with its adapters switched off."""

    def __init__(self, policy: CausalLMPolicy):
        self.policy = policy

    @torch.no_grad()
    def score(self, prompts: torch.Tensor, responses: torch.Tensor, temperature: float = 1.0,
              attention_mask: torch.Tensor | None = None) -> Scored:
        with adapters_disabled(self.policy.model):
            scored = self.policy.score(prompts, responses, temperature, attention_mask)
        return Scored(scored.logprobs, scored.entropy, None)


def _first_int(*values: Any, name: str) -> int:
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], int):
            return v[0]
    raise ValueError(f"{name} is unknown: pass {name}= or a tokenizer/config that defines it")


# ---------------------------------------------------------------------------------------------
# A token task through a tokenizer
# ---------------------------------------------------------------------------------------------
class TokenizedTask:
    """A ``toy_envs`` token task seen through a Hugging Face tokenizer.

    Prompts are the task's prompts as text (``task.decode``), tokenized and left-padded with the
    tokenizer's pad id (so the batch is (n, P') with P' the longest); responses are the model's
    tokens. Rewards, correctness and reference answers go through the text: a response is decoded
    up to its first eos (whitespace dropped), split greedily into the task's vocabulary (longest
    piece first; a character that is no piece becomes ``<pad>``, which never matches an answer) and
    scored by the task. ``max_new_tokens`` stays the task's: a tokenizer piece covers at least one
    character of the answer, and eos is one token.
    """

    def __init__(self, task: Any, tokenizer: Any):
        for attr in ("decode", "reward", "correct", "sample_prompts", "vocab"):
            if not hasattr(task, attr):
                raise TypeError(f"task must be a toy_envs token task, it has no {attr!r}")
        self.task, self.tokenizer = task, tokenizer
        self.eos_id = _first_int(tokenizer.eos_token_id, name="the tokenizer's eos_token_id")
        self.pad_id = _first_int(tokenizer.pad_token_id, self.eos_id, name="the tokenizer's pad_token_id")
        self.vocab_size = len(tokenizer)
        self.max_new_tokens = task.max_new_tokens
        self.partial_credit = getattr(task, "partial_credit", True)
        special = {task.vocab[task.pad_id], task.vocab[task.eos_id]}
        pieces = [(s, i) for i, s in enumerate(task.vocab) if s not in special]
        self._pieces = sorted(pieces, key=lambda p: -len(p[0]))             # longest first

    @property
    def prompt_len(self) -> int:
        return self.task.prompt_len

    def __repr__(self) -> str:
        return f"TokenizedTask({type(self.task).__name__}, {type(self.tokenizer).__name__})"

    # text <-> task tokens ------------------------------------------------------------------
    def parse(self, text: str) -> list[int]:
        """Task token ids of ``text`` (greedy longest piece; unknown characters -> ``<pad>``)."""
        text = re.sub(r"\s+", "", text)
        out, i = [], 0
        while i < len(text):
            for piece, token in self._pieces:
                if text.startswith(piece, i):
                    out.append(token)
                    i += len(piece)
                    break
            else:
                out.append(self.task.pad_id)
                i += 1
        return out

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def encode_prompts(self, task_prompts: torch.Tensor) -> torch.Tensor:
        """(n, P) task prompts -> (n, P') left-padded tokenizer ids on the same device."""
        texts = [self.task.decode(p) for p in task_prompts]
        rows = [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        padded = [[self.pad_id] * (width - len(r)) + list(r) for r in rows]
        return torch.tensor(padded, dtype=torch.long, device=task_prompts.device)

    def to_task(self, prompts: torch.Tensor, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizer prompts (n, P') and responses (n, T) -> the task's (n, P) and (n, T') tokens."""
        dev = prompts.device
        task_prompts, task_responses = [], []
        for p, r in zip(prompts.tolist(), responses.tolist()):
            start = next((i for i, t in enumerate(p) if t != self.pad_id), len(p))
            task_prompts.append(self.parse(self._text(p[start:])))
            ended = self.eos_id in r
            task_responses.append(self.parse(self._text(r[:r.index(self.eos_id)] if ended else r))
                                  + ([self.task.eos_id] if ended else []))
        P = max(len(p) for p in task_prompts)
        if any(len(p) != P for p in task_prompts):
            raise ValueError("the tokenizer does not round-trip the task's prompts")
        width = max(1, max(len(r) for r in task_responses))
        task_responses = [r + [self.task.pad_id] * (width - len(r)) for r in task_responses]
        return (torch.tensor(task_prompts, dtype=torch.long, device=dev).reshape(len(task_prompts), P),
                torch.tensor(task_responses, dtype=torch.long, device=dev))

    # the token-task API --------------------------------------------------------------------
    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.encode_prompts(self.task.sample_prompts(n, generator))

    def reward(self, prompts: torch.Tensor, responses: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return self.task.reward(*self.to_task(prompts, responses), generator)

    def correct(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        return self.task.correct(*self.to_task(prompts, responses))

    def targets(self, prompts: torch.Tensor) -> list[list[int]]:
        """The reference answers as tokenizer ids, ending in eos."""
        task_prompts, _ = self.to_task(prompts, prompts[:, :0])
        out = []
        for target in self.task.targets(task_prompts):
            text = self.task.decode([t for t in target if t != self.task.eos_id])
            out.append(list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.eos_id])
        return out

    def decode(self, tokens: torch.Tensor | list[int]) -> str:
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return self._text([i for i in ids if i != self.pad_id])


# ---------------------------------------------------------------------------------------------
# Building the policy of PolicyConfig.model = "hf(...)"
# ---------------------------------------------------------------------------------------------
def config_for(arch: str, **overrides: Any) -> Any:
    """A ``transformers`` config of ``arch`` with the lab's small defaults and ``overrides``.

    Unknown keys raise ``TypeError`` (a Hugging Face config would silently keep a typo).
    """
    import transformers

    check_choice("arch", arch, tuple(ARCHS))
    cls = getattr(transformers, ARCHS[arch])
    known = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}))
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise TypeError(f"hf(arch={arch!r}) has no setting(s) {', '.join(unknown)}; "
                        f"e.g. hidden_size, num_hidden_layers, num_attention_heads, intermediate_size")
    values = {**SMALL, **overrides}
    if arch != "gpt2":
        values.setdefault("intermediate_size", 8 * values["hidden_size"] // 3)
        values.setdefault("num_key_value_heads", values["num_attention_heads"])
    else:                                      # GPT-2's dropouts default to 0.1: RL runs without them
        for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            values.setdefault(key, 0.0)
    return cls(**values)


def _peft_spec(lora: Any) -> tuple[str, dict[str, Any]]:
    from lab.registry import parse_spec

    if isinstance(lora, int) and not isinstance(lora, bool):
        return "lora", {"rank": check_int("lora", lora, minimum=1)}
    if isinstance(lora, str):
        return parse_spec(lora)
    raise TypeError(f"lora must be a rank (int) or a peft spec such as 'lora(rank=8, alpha=16)', got {lora!r}")


def attach_adapters(model: nn.Module, lora: Any, generator: torch.Generator | None = None) -> int:
    """Attach the lab's PEFT adapters to ``model``; returns the trainable parameter count.

    ``lora`` is a rank (``8`` = LoRA of rank 8) or a ``peft`` spec (``"lora(rank=8, alpha=16)"``,
    ``"adalora(rank=4)"``, ``"lora(target=('q_proj', 'v_proj'))"``). Default target: every linear
    layer except the LM head.
    """
    from lab.peft.core import _is_conv1d, apply

    method, kwargs = _peft_spec(lora)
    if "target" not in kwargs:
        head = model.get_output_embeddings()
        names = [name for name, m in model.named_modules()
                 if name and m is not head and (isinstance(m, nn.Linear) or _is_conv1d(m))]
        kwargs["target"] = tuple(f"^{re.escape(n)}$" for n in names)
    elif isinstance(kwargs["target"], list):
        kwargs["target"] = tuple(kwargs["target"])
    return apply(model, method, generator=generator, **kwargs)


def policy_for_task(task: Any, *, arch: str | None = None, path: str | None = None, lora: Any = None,
                    gradient_checkpointing: bool = False, chunk_size: int | None = None, disable_dropout: bool = True,
                    dtype: str = "float32", attn_implementation: str | None = None, value_head: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | str | None = None,
                    **config: Any) -> CausalLMPolicy:
    """The :class:`CausalLMPolicy` of ``PolicyConfig.model = "hf(...)"`` for a token ``task``.

    Args:
        task: a ``toy_envs`` token task.
        arch: ``gpt2``, ``llama``, ``qwen2`` or ``mistral``: a random-init model from a config with
            the task's vocabulary (``vocab_size``, ``pad_token_id``, ``eos_token_id``) and ``config``.
        path: a local directory with a model and its tokenizer (``from_pretrained``, no network);
            the policy then sees the task through the tokenizer (:meth:`CausalLMPolicy.task_view`).
        lora: attach the lab's PEFT adapters (see :func:`attach_adapters`); π_ref is then the model
            with its adapters off.
        gradient_checkpointing, chunk_size, disable_dropout, value_head: see :class:`CausalLMPolicy`.
        dtype: parameter dtype, ``float32``, ``bfloat16`` or ``float16``.
        attn_implementation: e.g. ``"sdpa"`` or ``"eager"`` (default: the library's).
        generator: seeds the weights, the value head and the adapters (on ``device``).
        device: where the model lives.
        config: settings of the ``transformers`` config (``hidden_size``, ``num_hidden_layers``, ...).
    """
    import transformers

    if (arch is None) == (path is None):
        raise ValueError("hf(...) needs exactly one of arch= (a random-init model) or path= (a local directory)")
    check_choice("dtype", dtype, ("float32", "bfloat16", "float16"))
    torch_dtype = getattr(torch, dtype)
    dev = torch.device("cpu") if device is None else torch.device(device)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    tokenizer = None
    if arch is not None:
        taken = sorted({"vocab_size", "pad_token_id", "eos_token_id"} & set(config))
        if taken:
            raise TypeError(f"hf(arch=...) takes {', '.join(taken)} from the task; do not set them")
        cfg = _arch_values(arch, task, config)
        seed = 0 if generator is None else int(torch.randint(0, 2 ** 62, (), generator=generator,
                                                            device=generator.device))
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.device(dev):
            torch.manual_seed(seed)
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype, **extra)
    else:
        if config:
            raise TypeError(f"hf(path=...) loads its config from the directory; unexpected {', '.join(sorted(config))}")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        with torch.device(dev):
            model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                                      dtype=torch_dtype, **extra).to(dev)
    if lora is not None:
        attach_adapters(model, lora, generator)
    return CausalLMPolicy(model, tokenizer=tokenizer, chunk_size=chunk_size, value_head=value_head,
                          gradient_checkpointing=gradient_checkpointing, disable_dropout=disable_dropout,
                          generator=generator)


def _arch_values(arch: str, task: Any, config: dict[str, Any]) -> Any:
    length = task.prompt_len + task.max_new_tokens
    positions = {"n_positions": max(64, length)} if arch == "gpt2" else {"max_position_embeddings": max(64, length)}
    return config_for(arch, **{**positions, **config, "vocab_size": task.vocab_size, "pad_token_id": task.pad_id,
                               "eos_token_id": task.eos_id, "bos_token_id": None})


__all__ = ["ARCHS", "CausalLMPolicy", "TokenizedTask", "adapters_disabled", "attach_adapters", "config_for",
           "left_pad_mask", "policy_for_task", "position_ids"]
