"""TRL's ``GRPOTrainer`` with any registered lab advantage estimator and policy loss.

    from trl import GRPOConfig
    from lab.integrations.trl import LabGRPOTrainer

    trainer = LabGRPOTrainer(model=model, reward_funcs=reward_fn, args=GRPOConfig(...),
                             train_dataset=dataset, processing_class=tokenizer,
                             advantage="ngrpo", loss="gtpo")          # or "bnpo" + "hapo", ...
    trainer.train()

TRL keeps everything around the objective: generation (transformers or vLLM), reward functions
and their weights, the reference model (or PEFT adapters off), the fused chunked log-probs at the
sampling temperature τ, ``accelerate`` (gradient accumulation, data parallelism, mixed precision),
logging and checkpoints. The lab replaces two pieces, picked by registry spec strings exactly as
in ``lab.experiments.policy_optimization``:

- **advantages.** After TRL has generated and scored a generation batch, the estimator gets the
  batch under the lab's names (``spec/policy_losses.md`` F.1): ``rewards`` R_i = Σ_k w_k r_k(i)
  (TRL's weighted reward functions, before any normalization; ``scale_rewards`` is the estimator's
  business), ``group_size`` G = ``num_generations``, ``group_ids``, and when its signature asks for
  them ``mask``, ``token_ids``, ``lengths``, ``token_rewards``, ``old_logprobs``/``logprobs``,
  ``entropy``, ``step``, ``total_steps``. An estimator that reads only rewards and groups sees the
  rewards of every process (as TRL's own group normalization does) and each process keeps its
  slice; one that reads per-token tensors sees its own process's completions, which must then hold
  whole groups.
- **the loss.** Per micro-batch: ℓ and H from TRL's ``_get_per_token_logps_and_entropies``, then
  ``loss, metrics = policy_loss(batch)`` with ``old_logprobs`` (ℓ detached when TRL is on-policy: ρ ≡ 1),
  ``ref_logprobs`` (when β > 0), ``advantages``, ``mask``, ``entropy``, ``rewards``, ``group_ids``
  (the rows' groups, which follow the rows through TRL's shuffle and split), ``token_ids`` and the
  overrides ``clip_eps_low`` = ε, ``clip_eps_high`` = ε_high, ``beta`` = β from ``GRPOConfig``
  (a spec's own arguments win, e.g. ``"dapo(clip_eps_high=0.28)"``). TRL's static
  ``entropy_coef`` subtracts c_H times the token-mean entropy.

Normalization under gradient accumulation (``normalize``): with ``"window"`` (default) a loss that
takes ``norm`` gets the denominators of the whole accumulation window of its process,
``GlobalNorm(num_tokens = N_items/P · GA/S, num_seqs = num_rows = B_micro · GA, norm_const =
max_completion_length)`` (N_items: TRL's count of loss tokens in the generation batch, P
processes, S = ``steps_per_generation``), so the gradient summed over the window is that of the
loss over the window, whatever the aggregation; a loss without ``norm`` is divided by GA. With
``"micro_batch"`` every loss aggregates over its micro-batch and is divided by GA (TRL's
``grpo``/``bnpo``/``dr_grpo`` convention).

TRL's ``loss_type`` values and the lab specs that compute the same loss (tested on identical
inputs in ``tests/integrations/test_trl.py``):

    loss_type="grpo"     "grpo"                         per-response token mean, mean over responses
    loss_type="dr_grpo"  "dr_grpo"                      Σ / (B · max_completion_length)
    loss_type="dapo"     "dapo"                         Σ / loss tokens of the accumulation window
    loss_type="bnpo"     "grpo(agg='token_mean')" with normalize="micro_batch"
                         a token mean over the micro-batch. TRL's "bnpo" ("batch-normalized") is a
                         token normalization, *not* the BNPO paper (Beta-normalized advantages,
                         arXiv 2506.02864), which is ``advantage="bnpo"`` here.

The KL term is the lab loss's (its ``kl_estimator``, k3 by default, without TRL's
``use_bias_correction_kl`` factor ρ, which TRL applies by default). Other TRL options that act
inside its own loss are refused (``ValueError`` at construction) rather than
silently ignored: ``importance_sampling_level="sequence"`` (use ``loss="gspo"``), ``delta``,
``top_entropy_quantile < 1``, ``off_policy_mask_threshold``, ``use_adaptive_entropy``, vLLM
importance-sampling correction, ``multi_objective_aggregation="normalize_then_sum"``.

``trl`` is imported on first use of :data:`LabGRPOTrainer` (``pip install trainlab[hf]``).
"""
from __future__ import annotations

from typing import Any

import torch

from lab.checks import check_choice
from lab.rl.core import GlobalNorm, call_with, make_fn, masked_mean, wants

NORMALIZE = ("window", "micro_batch")
ADVANTAGE_KEYS = frozenset({"rewards", "group_size", "group_ids", "mask", "token_ids", "lengths",
                            "token_rewards", "old_logprobs", "logprobs", "entropy", "step", "total_steps"})
"""What the bridge can hand an advantage estimator."""
LOSS_KEYS = frozenset({"logprobs", "old_logprobs", "ref_logprobs", "advantages", "mask", "entropy", "rewards",
                       "group_ids", "token_ids", "lengths", "clip_eps_low", "clip_eps_high", "beta", "step",
                       "total_steps", "norm"})
"""What the bridge can hand a policy loss."""
TOKEN_KEYS = frozenset({"mask", "token_ids", "lengths", "token_rewards", "old_logprobs", "logprobs", "entropy"})


def _required(fn: Any) -> set[str]:
    import inspect

    bound = getattr(fn, "keywords", None) or {}
    return {name for name, p in inspect.signature(fn).parameters.items()
            if p.default is inspect.Parameter.empty and name not in bound and name != "self"
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_trl_args(args: Any) -> None:
    """Refuse the TRL options that act inside TRL's own loss or advantage code."""
    problems = []
    if getattr(args, "importance_sampling_level", "token") != "token":
        problems.append("importance_sampling_level='sequence' (use loss='gspo')")
    if getattr(args, "delta", None) is not None:
        problems.append("delta (two-sided clipping)")
    if getattr(args, "top_entropy_quantile", 1.0) < 1.0:
        problems.append("top_entropy_quantile < 1 (use a token_selector such as d3s in the lab's loop)")
    if getattr(args, "off_policy_mask_threshold", None) is not None:
        problems.append("off_policy_mask_threshold")
    if getattr(args, "use_adaptive_entropy", False):
        problems.append("use_adaptive_entropy (a static entropy_coef is supported)")
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_importance_sampling_correction", False):
        problems.append("vllm_importance_sampling_correction")
    if getattr(args, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
        problems.append("multi_objective_aggregation='normalize_then_sum' (the estimator sees Σ_k w_k r_k)")
    if problems:
        raise ValueError("LabGRPOTrainer does not support these GRPOConfig settings: " + "; ".join(problems))


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _build_trainer_class() -> type:
    from trl import GRPOTrainer

    class LabGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` whose advantages and loss are lab algorithms (see :mod:`lab.integrations.trl`).

        Args:
            *args, **kwargs: ``GRPOTrainer``'s (model, reward_funcs, args, train_dataset, ...).
            advantage: an ``advantage`` spec, e.g. ``"grpo"``, ``"ngrpo"``, ``"bnpo"``, ``"rloo"``.
            loss: a ``policy_loss`` spec, e.g. ``"grpo"``, ``"dapo"``, ``"gtpo"``, ``"hapo"``.
            normalize: ``"window"`` or ``"micro_batch"`` (module docstring).
        """

        def __init__(self, *args: Any, advantage: str = "grpo", loss: str = "grpo", normalize: str = "window",
                     **kwargs: Any):
            check_choice("normalize", normalize, NORMALIZE)
            estimator = make_fn("advantage", advantage)
            loss_fn = make_fn("policy_loss", loss)
            for role, spec, fn, keys in (("advantage", advantage, estimator, ADVANTAGE_KEYS),
                                         ("loss", loss, loss_fn, LOSS_KEYS)):
                missing = sorted(_required(fn) - keys)
                if missing:
                    raise TypeError(f"{role} {spec!r} needs {', '.join(missing)}, which TRL's batches do not "
                                    f"provide (a critic's values, prefix values, ...)")
            super().__init__(*args, **kwargs)
            check_trl_args(self.args)
            spec_beta = (getattr(loss_fn, "keywords", None) or {}).get("beta")
            if spec_beta and self.beta == 0.0:
                raise ValueError(f"loss {loss!r} sets beta={spec_beta} but GRPOConfig(beta=0.0) loads no reference "
                                 f"model; set GRPOConfig(beta=...) instead")
            self.lab_advantage, self.lab_loss, self.lab_normalize = estimator, loss_fn, normalize
            self.lab_specs = {"advantage": advantage, "loss": loss}
            self._lab_rewards_per_func = None

        # ---- advantages ----------------------------------------------------------------
        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._lab_rewards_per_func = rewards_per_func          # (N_all, K), every process's rows
            return rewards_per_func

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            mode = "train" if self.model.training else "eval"
            G = self.num_generations if mode == "train" else self.num_generations_eval
            per_func = self._lab_rewards_per_func
            if torch.isnan(per_func).all(-1).any():
                raise ValueError("every reward function returned None for some completion; the lab's estimators "
                                 "need a reward for each completion")
            rewards = (per_func * self.reward_weights.to(per_func.device)[None]).nansum(-1)   # (N_all,)
            n = output["completion_ids"].shape[0]
            start = self.accelerator.process_index * n
            group_ids = torch.arange(rewards.shape[0], device=rewards.device) // G
            mask = output["completion_mask"].bool()
            if "tool_mask" in output:
                mask = mask & output["tool_mask"].bool()
            token_level = bool(wants(self.lab_advantage) & TOKEN_KEYS)
            step = {"step": self.state.global_step, "total_steps": max(self.state.max_steps, 1)}
            if token_level:                                          # this process's completions only
                if n % G or start % G:
                    raise ValueError(f"advantage {self.lab_specs['advantage']!r} reads per-token tensors and needs "
                                     f"whole groups of {G} on each process; got {n} completions per process")
                local = slice(start, start + n)
                batch = {"rewards": rewards[local], "group_size": G, "group_ids": group_ids[local] - start // G,
                         "mask": mask, "token_ids": output["completion_ids"], "lengths": mask.sum(-1), **step}
                from lab.rl.rollout import token_rewards

                batch["token_rewards"] = token_rewards(batch["rewards"], mask)
                if wants(self.lab_advantage) & {"old_logprobs", "logprobs", "entropy"}:
                    batch.update(self._lab_old_logprobs(output))
                advantages, metrics = call_with(self.lab_advantage, batch)
            else:
                advantages, metrics = call_with(self.lab_advantage, {"rewards": rewards, "group_size": G,
                                                                     "group_ids": group_ids, **step})
                advantages = advantages[start:start + n]
            if advantages.shape[0] != n:
                raise ValueError(f"advantage {self.lab_specs['advantage']!r} returned {tuple(advantages.shape)}, "
                                 f"expected ({n},) or ({n}, T)")
            advantages = advantages.detach().float()
            output["advantages"] = advantages
            output["lab_rewards"] = rewards[start:start + n]
            output["lab_group_ids"] = group_ids[start:start + n]
            for key, value in _numbers(metrics).items():
                self._metrics[mode][f"lab/{key}"].append(value)
            # the completions table shows the lab's advantages (per response; the token mean if per token)
            seq_adv = advantages if advantages.dim() == 1 else masked_mean(advantages, mask, dim=-1)
            logged = self.accelerator.gather(seq_adv).tolist()
            table = self._logs["advantages"]
            for _ in range(min(len(logged), len(table))):
                table.pop()
            table.extend(logged)
            return output

        def _lab_old_logprobs(self, output: dict[str, Any]) -> dict[str, torch.Tensor]:
            """ℓ^old and H of the generation batch (TRL stores ℓ^old only when off-policy)."""
            ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            with torch.no_grad():
                logps, entropy, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, attention, output["completion_ids"].shape[1], compute_entropy=True)
            old = output.get("old_per_token_logps")
            old = logps if old is None else old
            return {"old_logprobs": old, "logprobs": old, "entropy": entropy}

        # ---- the loss ------------------------------------------------------------------
        def _compute_loss(self, model, inputs):
            prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            mask = inputs["completion_mask"].bool()
            if "tool_mask" in inputs:
                mask = mask & inputs["tool_mask"].bool()
            logps, entropy, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention, completion_ids.shape[1], compute_entropy=True)
            mode = "train" if self.model.training else "eval"
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
            old = inputs.get("old_per_token_logps")                  # None: TRL is on-policy, ρ ≡ 1
            batch = {"logprobs": logps, "old_logprobs": logps.detach() if old is None else old,
                     "ref_logprobs": inputs.get("ref_per_token_logps"), "advantages": inputs["advantages"],
                     "mask": mask, "entropy": entropy, "rewards": inputs.get("lab_rewards"),
                     "group_ids": inputs.get("lab_group_ids"), "token_ids": completion_ids,
                     "lengths": mask.sum(-1), "clip_eps_low": self.epsilon_low, "clip_eps_high": self.epsilon_high,
                     "beta": self.beta, "step": self.state.global_step,
                     "total_steps": max(self.state.max_steps, 1)}
            if batch["beta"] and batch["ref_logprobs"] is None:
                raise ValueError("beta > 0 needs the reference log-probs; TRL computes them when GRPOConfig.beta > 0")
            window = self.lab_normalize == "window" and "norm" in wants(self.lab_loss)
            if window:
                rows = float(mask.shape[0] * accumulation)
                tokens = float(inputs["num_items_in_batch"]) / self.accelerator.num_processes
                if mode == "train":
                    tokens = tokens * accumulation / self.args.steps_per_generation
                batch["norm"] = GlobalNorm(num_tokens=tokens, num_seqs=rows, num_rows=rows,
                                           norm_const=float(self.max_completion_length))
            loss, metrics = call_with(self.lab_loss, batch)
            if not window:
                loss = loss / accumulation
            if self.entropy_coef:
                loss = loss - self.entropy_coef * masked_mean(entropy, mask) / accumulation
            for key, value in _numbers(metrics).items():
                self._metrics[mode][f"lab/{key}"].append(value)
            self._metrics[mode]["entropy"].append(float(masked_mean(entropy.detach(), mask)))
            if "kl" in metrics:
                self._metrics[mode]["kl"].append(float(metrics["kl"]))
            if "clip_frac" in metrics:
                self._metrics[mode]["clip_ratio/region_mean"].append(float(metrics["clip_frac"]))
            return loss

    LabGRPOTrainer.__module__ = __name__
    return LabGRPOTrainer


def __getattr__(name: str) -> Any:
    # LabGRPOTrainer subclasses trl.GRPOTrainer: built (and trl imported) on first access
    if name == "LabGRPOTrainer":
        cls = _build_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LabGRPOTrainer", "ADVANTAGE_KEYS", "LOSS_KEYS", "NORMALIZE", "check_trl_args"]
