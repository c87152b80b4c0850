"""The lab's load balancers on Hugging Face MoE causal LMs (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3).

    handle = attach(model, "aux_free_bias", update_rate=1e-3)   # or "switch_aux", "seq_aux", ...
    for batch in data:
        out = model(**batch, labels=batch["input_ids"])
        (out.loss + handle.aux_loss()).backward()     # aux_loss() is 0 for a bias controller
        opt.step(); opt.zero_grad()
        handle.update()                               # the controllers' bias step, per layer
        plot(handle.stats())                          # per-layer load, max violation, biases
    handle.detach()                                   # the model is exactly as before

How it hooks in (no copy of the model's code). In transformers 5.x every sparse MoE block calls a
router module - ``MixtralTopKRouter``, ``Qwen2MoeTopKRouter``, ``Qwen3MoeTopKRouter``,
``DeepseekV3TopkRouter`` (the registry :data:`ROUTERS`) - that returns ``(router_logits,
top_k_weights, top_k_index)``. :func:`attach` puts a forward hook on each one. The hook records the
layer's logits and chosen experts; the per-layer load ``A_i`` (assignments per expert) accumulates
until :meth:`BalancerHandle.update`. A forward pre-hook on the model starts each forward pass
afresh (so :meth:`~BalancerHandle.aux_loss` pools that pass's layers) and notes the ``(B, S)``
token shape. Forwards recomputed by gradient checkpointing during backward are not counted twice.

Bias controllers (``aux_free_bias``, ``stochastic_balance``), one per layer, bias the *selection*
only, never the gate weights:

- DeepSeek-V3: ``aux_free_bias`` writes its biases into the router's own ``e_score_correction_bias``
  buffer, which HF's router adds to the sigmoid scores for the group and top-k choice and leaves out
  of the weights. The controller starts from the buffer's values (a pretrained model keeps its
  correction) and :meth:`~BalancerHandle.detach` restores them.
- Mixtral / Qwen (no such buffer): the hook replaces the router's choice - a minimal, documented
  patch of its output. From the unchanged logits h it recomputes ``s = softmax(h)`` (float32, as
  HF), chooses ``TopK(selection(s))`` (``s + b`` for aux_free_bias) and reads the weights from the
  *unbiased* s, renormalized over the k experts when the model does (Mixtral always, Qwen when
  ``norm_topk_prob``), cast to the dtype HF returns; the logits, and so HF's own
  ``router_logits`` outputs and aux loss, are untouched. With zero biases this is exactly HF's
  choice (tested). ``stochastic_balance`` on DeepSeek-V3 takes the same path, with the model's
  group-limited routing and ``routed_scaling_factor`` (its selection ``s * psi`` is not additive;
  the buffer, if non-zero, is added to it).

Loss balancers (``switch_aux``, ``z_loss``, ``seq_aux``): one balancer for all layers;
:meth:`~BalancerHandle.aux_loss` pools the layers as Hugging Face does - the layers' logits stacked
``(L, B, S, E)`` and handed to the balancer once, so ``switch_aux`` is one ``E sum_i f_i P_i`` over
all layers' tokens (``load_balancing_loss_func``), ``z_loss`` the mean over all layers' tokens
(``router_z_loss_func`` on concatenated layers), ``seq_aux`` the mean over all (layer, sequence)
pairs - so ``router_aux_loss_coef`` values transfer. A ``switch_aux`` given by name without a
``coef`` takes the model's ``config.router_aux_loss_coef`` when the config has one (Mixtral and
Qwen: 0.001), and ``seq_aux`` on a sigmoid router scores with the sigmoid. The loss uses the actual
chosen experts, which for an unpatched softmax router are exactly HF's ``TopK(softmax(h))``.

``update_rate`` is the controller's step size: ``u`` of ``aux_free_bias`` (DeepSeek-V3's bias
update speed gamma) and ``1 - memory`` of ``stochastic_balance``; it does not apply to losses.

Needs transformers >= 5 (router modules); 4.x routes inside the MoE block's ``forward`` and is
reported as unsupported. Other families with the same router contract can be added to
:data:`ROUTERS` (class name -> score function).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lab.checks import check_int, check_positive, check_range
from lab.moe.metrics import max_violation
from lab.moe.router import check_groups, is_controller, scores_from_logits, select_topk
from lab.registry import get, make, parse_spec

ROUTERS: dict[str, str] = {
    "MixtralTopKRouter": "softmax",
    "Qwen2MoeTopKRouter": "softmax",
    "Qwen3MoeTopKRouter": "softmax",
    "DeepseekV3TopkRouter": "sigmoid",
}
"""Router classes :func:`attach` knows (class name -> ``"softmax"`` or ``"sigmoid"`` scores)."""


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a checkpointed forward being recomputed)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


@dataclass
class _Layer:
    """One MoE layer's router and what the handle keeps for it."""

    name: str
    router: nn.Module
    n_experts: int
    k: int
    score_fn: str
    balancer: Any                          # this layer's controller, or the shared loss balancer
    use_buffer: bool                       # True: biases go into e_score_correction_bias
    pending: torch.Tensor                  # (E,) loads since the last update()
    last_load: torch.Tensor                # (E,) load of the last forward
    saved_bias: torch.Tensor | None = None  # the buffer before attach (restored by detach)
    logits: torch.Tensor | None = None     # (T, E) of the last forward, with grad
    indices: torch.Tensor | None = None    # (T, k)
    hooks: list[Any] = field(default_factory=list)

    def routing_kwargs(self) -> dict[str, Any]:
        """The router's norm/group/scale settings, read from its attributes (HF names)."""
        r = self.router
        n_group = int(getattr(r, "num_group", 1) or 1)
        return {"norm_topk": bool(getattr(r, "norm_topk_prob", True)), "n_group": n_group,
                "topk_group": int(getattr(r, "topk_group", n_group) or n_group),
                "routed_scaling_factor": float(getattr(r, "routed_scaling_factor", 1.0) or 1.0)}


def find_routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(qualified name, router module)]`` of every known MoE router in ``model``, in order."""
    found = [(name, mod) for name, mod in model.named_modules() if type(mod).__name__ in ROUTERS]
    if found:
        return found
    old = [name for name, mod in model.named_modules()
           if type(mod).__name__.endswith("SparseMoeBlock") and isinstance(getattr(mod, "gate", None), nn.Linear)]
    if old:
        raise TypeError(f"{type(model).__name__} routes inside its MoE blocks' forward (transformers 4.x layout, "
                        f"e.g. {old[0]}); lab.moe.hf needs transformers >= 5, whose MoE blocks call a router module")
    raise TypeError(f"no supported MoE router in {type(model).__name__}; supported router classes: "
                    f"{', '.join(ROUTERS)} (register others in lab.moe.hf.ROUTERS)")


def _make_balancer(balancer: Any, n_experts: int, config: Any, score_fn: str, device: torch.device) -> Any:
    """A fresh balancer for one layer from a spec string or a template instance (None: none)."""
    if balancer is None or balancer == "none":
        return None
    if not isinstance(balancer, str):
        if not (is_controller(balancer) or hasattr(balancer, "loss")):
            raise TypeError("balancer must be a registry spec such as 'aux_free_bias' or a balancer instance "
                            f"(loss(...) or selection(...) + update(...)), got {type(balancer).__name__}")
        if getattr(balancer, "n_experts", n_experts) != n_experts:
            raise ValueError(f"balancer was built for {balancer.n_experts} experts, the model's routers have {n_experts}")
        return copy.deepcopy(balancer)
    name, kwargs = parse_spec(balancer)
    params = inspect.signature(get("balancer", name)).parameters
    if name == "switch_aux" and "coef" not in kwargs and getattr(config, "router_aux_loss_coef", None) is not None:
        kwargs["coef"] = float(config.router_aux_loss_coef)  # the model's own coefficient
    if "score_fn" in params and "score_fn" not in kwargs:
        kwargs["score_fn"] = score_fn
    if "device" in params and "device" not in kwargs:
        kwargs["device"] = device
    return make("balancer", name, n_experts, **kwargs)


def _set_update_rate(controller: Any, rate: float) -> None:
    if hasattr(controller, "u"):
        controller.u = check_positive("update_rate", rate)
    elif hasattr(controller, "memory"):
        controller.memory = 1.0 - check_range("update_rate", rate, 0.0, 1.0, lo_open=True)
    else:
        raise TypeError(f"update_rate: {type(controller).__name__} has no step size (u or memory) to set")


class BalancerHandle:
    """What :func:`attach` returns: per-layer loads, the balancer's loss or bias updates, detach.

    Attributes: ``model``, ``balancer`` (the spec or template given), ``controller`` (True for a
    bias controller), ``layers`` (the routers' qualified names), ``steps`` (updates so far).
    """

    def __init__(self, model: nn.Module, balancer: Any, *, update_rate: float | None = None):
        if getattr(model, "_lab_balancer_handle", None) is not None:
            raise ValueError("model already has a balancer attached; detach() it first")
        routers = find_routers(model)
        self.model, self.balancer, self.steps = model, balancer, 0
        self._attached = True
        self._token_shape: tuple[int, int] | None = None
        self._layers: list[_Layer] = []
        config = getattr(model, "config", None)
        try:
            self._hook_routers(routers, balancer, config, update_rate)
        except BaseException:  # leave the model as it was
            for layer in self._layers:
                for h in layer.hooks:
                    h.remove()
            raise
        self.controller = is_controller(self._layers[0].balancer)
        self._pre = model.register_forward_pre_hook(self._start_forward, with_kwargs=True)
        model._lab_balancer_handle = self

    def _hook_routers(self, routers: list[tuple[str, nn.Module]], balancer: Any, config: Any,
                      update_rate: float | None) -> None:
        shared = None
        for name, router in routers:
            e, k = int(router.num_experts), int(router.top_k)
            score_fn = ROUTERS[type(router).__name__]
            device = router.weight.device
            if self._layers and not is_controller(shared):
                bal = shared  # one loss balancer (or none) pools every layer
            else:
                bal = _make_balancer(balancer, e, config, score_fn, device)
                shared = bal
            controller = is_controller(bal)
            if update_rate is not None:
                if not controller:
                    raise ValueError("update_rate is the step size of a bias controller (aux_free_bias, "
                                     f"stochastic_balance); got {type(bal).__name__}")
                _set_update_rate(bal, update_rate)
            use_buffer = controller and hasattr(router, "e_score_correction_bias") and hasattr(bal, "u")
            zeros = torch.zeros(e, dtype=torch.float64, device=device)
            layer = _Layer(name, router, e, k, score_fn, bal, use_buffer, zeros.clone(), zeros.clone())
            if use_buffer:  # start from (and later restore) the model's own correction bias
                layer.saved_bias = router.e_score_correction_bias.detach().clone()
                bal.bias = layer.saved_bias.to(device=device, dtype=torch.float64).clone()
            self._layers.append(layer)
            layer.hooks.append(router.register_forward_hook(self._make_hook(layer)))

    # ------------------------------------------------------------------ hooks
    def _start_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if _in_backward():
            return
        for layer in self._layers:
            layer.logits = layer.indices = None
        first = kwargs.get("input_ids", args[0] if args else None)
        if first is None:
            first = kwargs.get("inputs_embeds")
        self._token_shape = tuple(first.shape[:2]) if isinstance(first, torch.Tensor) and first.dim() >= 2 else None

    def _make_hook(self, layer: _Layer):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
            logits, weights, indices = output
            if self.controller and not layer.use_buffer:
                # selection-only patch: TopK(selection(s)), weights from the unbiased s
                scores = scores_from_logits(logits.float(), layer.score_fn)  # (T, E)
                selection = layer.balancer.selection(scores)
                if hasattr(module, "e_score_correction_bias"):
                    selection = selection + module.e_score_correction_bias.to(selection)
                indices, gates = select_topk(scores, layer.k, selection, **layer.routing_kwargs())
                weights = gates.to(weights.dtype)
                output = (logits, weights, indices)
            if not _in_backward():
                layer.logits, layer.indices = logits, indices
                load = torch.bincount(indices.reshape(-1), minlength=layer.n_experts).to(layer.pending)
                layer.last_load = load
                layer.pending += load
            return output
        return hook

    # ------------------------------------------------------------------ API
    @property
    def layers(self) -> list[str]:
        """Qualified names of the routers, in model order."""
        return [layer.name for layer in self._layers]

    def _check_attached(self) -> None:
        if not self._attached:
            raise RuntimeError("this BalancerHandle was detached")

    def aux_loss(self, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The balancer's loss over the last forward, pooled over layers as Hugging Face pools it.

        Exactly 0 (a tensor) for a bias controller. ``attention_mask (B, S)`` (1 = real token)
        excludes padding, as HF's ``load_balancing_loss_func`` does.
        """
        self._check_attached()
        recorded = [layer for layer in self._layers if layer.logits is not None]
        if not recorded:
            raise RuntimeError("no forward pass recorded since attach(): run the model first")
        if self.controller or recorded[0].balancer is None:
            return recorded[0].logits.new_zeros(())
        logits = torch.stack([layer.logits for layer in recorded])  # (L, T, E)
        indices = torch.stack([layer.indices for layer in recorded])  # (L, T, k)
        if self._token_shape is not None and logits.shape[1] == self._token_shape[0] * self._token_shape[1]:
            logits = logits.unflatten(1, self._token_shape)  # (L, B, S, E)
            indices = indices.unflatten(1, self._token_shape)
        elif attention_mask is not None:
            attention_mask = attention_mask.reshape(-1)
        return recorded[0].balancer.loss(logits, indices, attention_mask)[0]

    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """Apply each layer's controller update to the loads counted since the last call (call it
        after every optimizer step); returns :meth:`stats` of those loads. For a loss balancer it
        only closes the counting window."""
        self._check_attached()
        loads = [layer.pending.clone() for layer in self._layers]
        for layer in self._layers:
            if self.controller:
                layer.balancer.update(layer.pending)
                if layer.use_buffer:
                    layer.router.e_score_correction_bias.copy_(layer.balancer.bias)
            layer.pending.zero_()
        self.steps += 1
        return self._stats(loads)

    def stats(self) -> dict[str, Any]:
        """Per-layer ``load`` (L, E) and ``max_violation`` (L,) of the last forward, and ``bias``
        (L, E) of the controllers (None for a loss); CPU tensors, ready for plots."""
        self._check_attached()
        return self._stats([layer.last_load for layer in self._layers])

    def _stats(self, loads: list[torch.Tensor]) -> dict[str, Any]:
        load = torch.stack(loads).detach().cpu()
        bias = None
        if self.controller:
            bias = torch.stack([layer.balancer.bias.detach().to(torch.float64) for layer in self._layers]).cpu()
        return {"layers": self.layers, "load": load, "bias": bias,
                "max_violation": torch.tensor([max_violation(a) for a in load], dtype=torch.float64, device="cpu")}

    def detach(self) -> None:
        """Remove every hook and restore the routers' buffers: the model computes exactly what it
        computed before :func:`attach`. Idempotent."""
        if not self._attached:
            return
        for layer in self._layers:
            for h in layer.hooks:
                h.remove()
            if layer.saved_bias is not None:
                with torch.no_grad():
                    layer.router.e_score_correction_bias.copy_(layer.saved_bias)
            layer.logits = layer.indices = None
        self._pre.remove()
        del self.model._lab_balancer_handle
        self._attached = False

    def __enter__(self) -> "BalancerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def __repr__(self) -> str:
        kind = "controller" if self.controller else "loss"
        state = "attached" if self._attached else "detached"
        kind = kind if self._layers[0].balancer is not None else "recording only"
        return (f"BalancerHandle({type(self._layers[0].balancer).__name__} {kind}, {len(self._layers)} layers, "
                f"{state})")


ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")


def tiny_model(arch: str = "mixtral", *, vocab: int = 64, d_model: int = 32, n_layers: int = 2,
               n_experts: int = 8, k: int = 2, n_heads: int = 2, max_len: int = 64, n_group: int = 1,
               topk_group: int = 1, routed_scaling_factor: float = 1.0, seed: int = 0,
               device: torch.device | str | None = None) -> nn.Module:
    """A tiny Hugging Face MoE causal LM built from a config with random weights (no download).

    Every layer is an MoE layer (Qwen2-MoE's ``decoder_sparse_step=1``, DeepSeek-V3's
    ``first_k_dense_replace=0``); expert width ``2 * d_model`` (MoE width ``d_model`` with one shared
    expert for Qwen2-MoE and DeepSeek-V3); DeepSeek-V3's latent attention at rank ``d_model // 2``.
    ``n_group``, ``topk_group`` and ``routed_scaling_factor`` apply to DeepSeek-V3 only. HF draws the
    initial weights from torch's global generator: they are drawn inside ``fork_rng`` seeded with
    ``seed``, so the caller's global random state is left as it was. The model is built on ``device``.
    """
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(map(repr, ARCHS))}; got {arch!r}")
    check_int("vocab", vocab, minimum=2)
    check_int("d_model", d_model, minimum=1)
    check_int("n_layers", n_layers, minimum=1)
    check_int("n_heads", n_heads, minimum=1)
    check_int("max_len", max_len, minimum=1)
    check_int("n_experts", n_experts, minimum=1)
    check_groups(n_experts, k, n_group, topk_group, routed_scaling_factor)
    check_int("seed", seed, minimum=0)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    common = dict(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                  num_key_value_heads=n_heads, max_position_embeddings=max_len, num_experts_per_tok=k,
                  pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)
    if arch == "mixtral":
        config, cls = transformers.MixtralConfig(**common, intermediate_size=2 * d_model,
                                                 num_local_experts=n_experts), transformers.MixtralForCausalLM
    elif arch == "qwen2_moe":
        config, cls = transformers.Qwen2MoeConfig(**common, intermediate_size=2 * d_model, moe_intermediate_size=d_model,
                                                  shared_expert_intermediate_size=d_model, num_experts=n_experts,
                                                  decoder_sparse_step=1), transformers.Qwen2MoeForCausalLM
    elif arch == "qwen3_moe":
        config, cls = transformers.Qwen3MoeConfig(**common, intermediate_size=2 * d_model, moe_intermediate_size=d_model,
                                                  num_experts=n_experts, head_dim=d_model // n_heads,
                                                  decoder_sparse_step=1), transformers.Qwen3MoeForCausalLM
    else:
        head = max(2, d_model // n_heads)
        config, cls = transformers.DeepseekV3Config(
            **common, intermediate_size=2 * d_model, moe_intermediate_size=d_model, n_routed_experts=n_experts,
            n_shared_experts=1, n_group=n_group, topk_group=topk_group, routed_scaling_factor=routed_scaling_factor,
            norm_topk_prob=True, first_k_dense_replace=0, kv_lora_rank=max(2, d_model // 2), q_lora_rank=None,
            qk_rope_head_dim=head // 2, qk_nope_head_dim=head // 2, v_head_dim=head), transformers.DeepseekV3ForCausalLM
    device = torch.device("cpu") if device is None else torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        model = cls(config)
    return model


def attach(model: nn.Module, balancer: Any, *, update_rate: float | None = None) -> BalancerHandle:
    """Attach a lab balancer to every MoE router of a Hugging Face causal LM.

    Args:
        model: a transformers 5.x Mixtral, Qwen2-MoE, Qwen3-MoE or DeepSeek-V3 model (any module
            holding routers listed in :data:`ROUTERS`).
        balancer: a registry spec (``"aux_free_bias"``, ``"aux_free_bias(u=1e-3)"``,
            ``"switch_aux"``, ``"z_loss"``, ``"seq_aux"``, ``"stochastic_balance"``), a balancer
            instance used as a template (controllers are copied, one per layer), or ``None`` /
            ``"none"`` to only record the per-layer loads (``aux_loss()`` is then 0).
        update_rate: the controllers' step size (``u``, or ``1 - memory``); None keeps the balancer's.

    Returns:
        A :class:`BalancerHandle`; ``handle.detach()`` (or leaving a ``with`` block) undoes it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return BalancerHandle(model, balancer, update_rate=update_rate)


__all__ = ["ARCHS", "BalancerHandle", "ROUTERS", "attach", "find_routers", "tiny_model"]
