"""Experiments of the preference lessons: preference training, Step-DPO, f-divergence SFT, unlearning.

``preference_training`` — any pair loss (``dpo``, ``ipo``, ``simpo``, ``alphapo``, ...) on the
synthetic Bradley–Terry data of :mod:`toy_envs.preferences`, starting from the task's reference
policy (a tabular softmax, one logit vector per prompt and position). Each step::

    ℓ_w, ℓ_l = π_θ.score(prompts, chosen / rejected)        token log-probs with grad
    loss     = loss_fn(ℓ_w, ℓ_l, masks, ℓ^ref_w, ℓ^ref_l)    registry spec + config overrides
    Adam step; log chosen_logps / rejected_logps (mean S), reward_margin, displacement,
              ranking_accuracy vs idealized_ranking_accuracy, the true reward of fresh samples

Config overrides (``beta``, ``gamma``, ``alpha``, ``label_smoothing``, ``length_normalize``) reach
the loss only if its signature names them and the spec does not set them itself; the others are
listed in ``meta['ignored']``.
``displacement`` is D_t = chosen_logps_t − chosen_logps_0 (< 0: the chosen responses lost
likelihood while the margin grew). The idealized ranking accuracy uses β = ``ideal_beta`` (None:
the loss's β when it has a reference, else 0.1). ``ranking_accuracy_ref_wrong`` is the ranking
accuracy on the pairs the reference misranks but the idealized optimum ranks correctly (whose
idealized accuracy is 1 by definition): the paper's gap.

``step_dpo_chains`` — Step-DPO on step pairs (state = problem + correct steps; chosen = the correct
next step, rejected = a wrong one) from a random reference; logs greedy step and chain accuracy.

``sft_divergences`` — SFT on the best responses of the preference task with :func:`lab.preference.sft.sft`
(``divergence="sft"``) or :func:`lab.preference.fdiv_sft.fdiv_sft` (``divergence``) and a learning rate
scaled by ``lr_factor`` (the paper's learning-rate reduction); logs the data NLL, KL(π‖π_ref) and
the true reward.

``unlearning`` — a tiny causal transformer first fitted (SFT) to responses of every prompt, then
made to forget the responses of prompt 0 with LoKU's inverted hinge loss (``method="ihl"``) or
gradient ascent on their NLL (``"ga"``), with an optional retain NLL term; logs the forget tokens'
probability and their runner-up's, and the retain NLL (fluency on what should be kept).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from lab import progress
from lab.checks import check_choice, check_int, check_positive
from lab.experiments._base import experiment, resolve_device
from lab.history import History
from lab.rl.core import call_with, make_fn, masked_sum
from lab.preference.fdiv_sft import DIVERGENCES, fdiv_sft
from lab.preference.inverted_hinge import inverted_hinge
from lab.preference.core import implicit_reward
from lab.preference.sft import sft
from lab.preference.ranking import likelihood_displacement, ranking_accuracy
from toy_envs.preferences import EOS, PAD, PreferenceTask, StepTask

OVERRIDES = ("beta", "gamma", "alpha", "label_smoothing", "length_normalize")


@dataclass(frozen=True)
class PreferenceConfig:
    """Config of ``preference_training``."""

    loss: str = "dpo"  # preference loss spec: "dpo", "ipo", "simpo", "alphapo(alpha=1.0)", ...
    beta: float | None = None  # override β (None = the loss's default)
    gamma: float | None = None  # override the target margin γ (SimPO / AlphaPO)
    alpha: float | None = None  # override AlphaPO's α
    label_smoothing: float | None = None  # override the label smoothing ε
    length_normalize: bool | None = None  # override length normalization (None = the loss's default)
    steps: int = 60  # full-batch optimizer steps
    lr: float = 0.05  # Adam learning rate
    n_pairs: int = 64  # preference pairs in the data set
    noisy_labels: bool = False  # draw labels from Bradley–Terry (True) or give them to the better response
    n_prompts: int = 4  # distinct prompts
    max_len: int = 4  # longest response (content tokens)
    ref_noise: float = 1.0  # noise of the reference's logits (more: more misranked pairs)
    ideal_beta: float | None = None  # β of the idealized optimum (None: the loss's β if it uses a reference)
    n_samples: int = 64  # fresh samples per step for the true reward
    seed: int = 0  # seed of the task, data and sampling
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot(history: History):
    from lab.viz.preference import training_figure

    return training_figure(history)


def _loss_default(fn: Any, name: str) -> Any:
    bound = getattr(fn, "keywords", None) or {}
    if name in bound:
        return bound[name]
    param = inspect.signature(fn).parameters.get(name)
    return None if param is None else param.default


def _score(policy: Any, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    return policy.score(prompts, responses).logprobs                               # (N, T)


@experiment("preference_training", PreferenceConfig,
            paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
            arxiv="2305.18290", plot=_plot, smoke={"steps": 3, "n_pairs": 8, "n_samples": 8},
            summary="A pair loss on Bradley–Terry toy data: displacement, margins, ranking accuracy")
def preference_training(cfg: PreferenceConfig) -> History:
    for name in ("steps", "n_pairs", "n_prompts", "max_len", "n_samples"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("lr", cfg.lr)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task = PreferenceTask(n_prompts=cfg.n_prompts, max_len=cfg.max_len, ref_noise=cfg.ref_noise, seed=cfg.seed,
                          device=dev)
    data = task.sample_pairs(cfg.n_pairs, generator, noisy_labels=cfg.noisy_labels)
    loss_fn = make_fn("preference_loss", cfg.loss)
    params = set(inspect.signature(loss_fn).parameters)
    bound = getattr(loss_fn, "keywords", None) or {}           # a spec's own arguments win (call_with)
    overrides = {k: getattr(cfg, k) for k in OVERRIDES if getattr(cfg, k) is not None}
    ignored = sorted(k for k in overrides if k not in params or k in bound)
    overrides = {k: v for k, v in overrides.items() if k not in ignored}
    reference = task.reference_policy().requires_grad_(False)
    policy = task.reference_policy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    with torch.no_grad():
        ref_w, ref_l = _score(reference, data.prompts, data.chosen), _score(reference, data.prompts, data.rejected)
    beta = overrides.get("beta", _loss_default(loss_fn, "beta"))
    ideal_beta = cfg.ideal_beta if cfg.ideal_beta is not None else (
        beta if "ref_chosen_logprobs" in params and beta is not None else 0.1)
    history = History(meta={"algorithm": cfg.loss, "seed": cfg.seed, "ignored": ignored,
                            "loss_hparams": {k: overrides.get(k, _loss_default(loss_fn, k)) for k in OVERRIDES
                                             if k in params},
                            "ideal_beta": ideal_beta})
    sample_generator = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    ref_s_w, ref_s_l = masked_sum(ref_w, data.chosen_mask, dim=-1), masked_sum(ref_l, data.rejected_mask, dim=-1)
    chosen_means, hard = [], None
    for step in progress.steps(cfg.steps + 1, desc=cfg.loss, history=history):
        logp_w, logp_l = _score(policy, data.prompts, data.chosen), _score(policy, data.prompts, data.rejected)
        batch = {"chosen_logprobs": logp_w, "rejected_logprobs": logp_l, "chosen_mask": data.chosen_mask,
                 "rejected_mask": data.rejected_mask, "ref_chosen_logprobs": ref_w,
                 "ref_rejected_logprobs": ref_l, **overrides}
        loss, metrics = call_with(loss_fn, batch)
        _, ranks = ranking_accuracy(logp_w, logp_l, chosen_mask=data.chosen_mask, rejected_mask=data.rejected_mask,
                                    ref_chosen_logprobs=ref_w, ref_rejected_logprobs=ref_l,
                                    pref_prob=data.pref_prob, beta=ideal_beta)
        s_w = masked_sum(logp_w.detach(), data.chosen_mask, dim=-1)
        s_l = masked_sum(logp_l.detach(), data.rejected_mask, dim=-1)
        chosen_means.append(float(s_w.mean()))
        if hard is None:   # pairs the reference misranks but the idealized optimum ranks correctly
            hard = (ref_s_w <= ref_s_l) & ranks["idealized_correct"]
        with torch.no_grad():
            prompts = task.sample_prompts(cfg.n_samples, sample_generator)
            sample = policy.generate(prompts, generator=sample_generator, eos_id=EOS, pad_id=PAD)
            reward = task.reward(prompts, sample.tokens).mean()
        history.append(step, loss=loss, chosen_logps=s_w.mean(), rejected_logps=s_l.mean(),
                       margin=(s_w - s_l).mean(), reward_margin=metrics["reward_margin"],
                       reward_acc=metrics["reward_acc"], displacement=likelihood_displacement(chosen_means)[-1],
                       ranking_accuracy=ranks["ranking_accuracy"],
                       idealized_ranking_accuracy=ranks["idealized_ranking_accuracy"],
                       ref_ranking_accuracy=ranks["ref_ranking_accuracy"],
                       ranking_accuracy_ref_wrong=ranks["ranking_correct"][hard].float().mean() if hard.any() else 1.0,
                       reward=reward,
                       response_length=sample.lengths.float().mean())
        if step == cfg.steps:
            history.artifacts["final_correct"] = ranks["ranking_correct"].tolist()
            history.artifacts["idealized_correct"] = ranks["idealized_correct"].tolist()
            history.artifacts["chosen_logps"] = s_w.tolist()
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    history.artifacts["ref_margin"] = (ref_s_w - ref_s_l).tolist()
    history.artifacts["pref_prob"] = data.pref_prob.tolist()
    return history


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepConfig:
    """Config of ``step_dpo_chains``."""

    loss: str = "step_dpo"  # preference loss spec used on the step pairs
    steps: int = 40  # optimizer steps (a fresh batch of step pairs each step)
    lr: float = 0.1  # Adam learning rate
    n_pairs: int = 32  # step pairs per batch
    n_problems: int = 4  # problems
    n_steps: int = 3  # steps per solution
    init_std: float = 1.0  # standard deviation of the random reference's logits
    seed: int = 0  # seed of the task, the reference and the pairs
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_steps(history: History):
    from lab.viz.figures import curves

    return curves(history, ["chain_accuracy", "step_accuracy", "loss"])


@experiment("step_dpo_chains", StepConfig,
            paper="Step-DPO: Step-wise Preference Optimization for Long-chain Reasoning of LLMs",
            arxiv="2406.18629", plot=_plot_steps, smoke={"steps": 3, "n_pairs": 8},
            summary="Step-DPO on step pairs: greedy chain accuracy")
def step_dpo_chains(cfg: StepConfig) -> History:
    from lab.models.policy import TabularPolicy

    for name in ("steps", "n_pairs", "n_problems", "n_steps"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("lr", cfg.lr)
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task = StepTask(n_problems=cfg.n_problems, n_steps=cfg.n_steps, seed=cfg.seed, device=dev)
    policy = TabularPolicy(task.vocab_size, task.prompt_len, task.max_new_tokens, init_std=cfg.init_std,
                           generator=generator, device=dev)
    reference = TabularPolicy(task.vocab_size, task.prompt_len, task.max_new_tokens,
                              device=dev).requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    loss_fn = make_fn("preference_loss", cfg.loss)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    history = History(meta={"algorithm": cfg.loss, "seed": cfg.seed})
    for step in progress.steps(cfg.steps + 1, desc=cfg.loss, history=history):
        step_acc, chain_acc = task.chain_accuracy(policy)
        if step == cfg.steps:
            history.append(step, step_accuracy=step_acc, chain_accuracy=chain_acc)
            break
        pairs = task.step_pairs(cfg.n_pairs, generator)
        with torch.no_grad():
            ref_w, ref_l = _score(reference, pairs.prompts, pairs.chosen), _score(reference, pairs.prompts,
                                                                                  pairs.rejected)
        batch = {"chosen_logprobs": _score(policy, pairs.prompts, pairs.chosen),
                 "rejected_logprobs": _score(policy, pairs.prompts, pairs.rejected),
                 "chosen_mask": pairs.chosen_mask, "rejected_mask": pairs.rejected_mask,
                 "ref_chosen_logprobs": ref_w, "ref_rejected_logprobs": ref_l}
        loss, metrics = call_with(loss_fn, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(step, loss=loss, step_accuracy=step_acc, chain_accuracy=chain_acc,
                       reward_margin=metrics["reward_margin"], chosen_logps=metrics["chosen_logps"])
    return history


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SFTConfig:
    """Config of ``sft_divergences``."""

    divergence: str = "kl"  # "sft" (token-mean NLL) or f of fdiv_sft: "kl", "reverse_kl", "pearson", "hellinger", "js"
    lr: float = 0.1  # base Adam learning rate
    lr_factor: float = 1.0  # learning-rate reduction: the run uses lr · lr_factor (the paper's remedy: < 1)
    steps: int = 60  # full-batch optimizer steps
    n_demos: int = 64  # demonstrations (the better response of each pair)
    n_ref_samples: int = 128  # responses sampled from the reference for the E_ref term
    n_samples: int = 64  # fresh policy samples per step (KL and true reward)
    seed: int = 0  # seed of the task, data and sampling
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_sft(history: History):
    from lab.viz.figures import curves

    return curves(history, ["nll", "kl", "reward"])


@experiment("sft_divergences", SFTConfig,
            paper="Implicit Reward as the Bridge: A Unified View of SFT and DPO Connections", arxiv="2507.00018",
            plot=_plot_sft, smoke={"steps": 3, "n_demos": 8, "n_ref_samples": 8, "n_samples": 8, "divergence": "js"},
            summary="SFT vs f-divergence SFT and a reduced learning rate: drift from the reference")
def sft_divergences(cfg: SFTConfig) -> History:
    for name in ("steps", "n_demos", "n_ref_samples", "n_samples"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("lr", cfg.lr)
    check_positive("lr_factor", cfg.lr_factor)
    check_choice("divergence", cfg.divergence, ("sft", *DIVERGENCES))
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task = PreferenceTask(seed=cfg.seed, device=dev)
    demos = task.sample_pairs(cfg.n_demos, generator, noisy_labels=False)
    ref_prompts = task.sample_prompts(cfg.n_ref_samples, generator)
    ref_tokens, ref_mask = task.sample_responses(ref_prompts, generator)
    reference = task.reference_policy().requires_grad_(False)
    policy = task.reference_policy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr * cfg.lr_factor)
    with torch.no_grad():
        ref_demo = _score(reference, demos.prompts, demos.chosen)
        ref_sample_ref = _score(reference, ref_prompts, ref_tokens)
    history = History(meta={"algorithm": f"{cfg.divergence} (lr x{cfg.lr_factor:g})", "seed": cfg.seed})
    sample_generator = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    for step in progress.steps(cfg.steps + 1, desc=cfg.divergence, history=history):
        logp = _score(policy, demos.prompts, demos.chosen)
        if cfg.divergence == "sft":
            loss, metrics = sft(logp, demos.chosen_mask)
            metrics["implicit_reward"] = float(implicit_reward(logp.detach(), ref_demo, demos.chosen_mask).mean())
        else:
            loss, metrics = fdiv_sft(logp, demos.chosen_mask, ref_logprobs=ref_demo, divergence=cfg.divergence,
                                     ref_sample_logprobs=_score(policy, ref_prompts, ref_tokens),
                                     ref_sample_ref_logprobs=ref_sample_ref, ref_sample_mask=ref_mask)
        with torch.no_grad():
            prompts = task.sample_prompts(cfg.n_samples, sample_generator)
            sample = policy.generate(prompts, generator=sample_generator, eos_id=EOS, pad_id=PAD)
            ref_logp = _score(reference, prompts, sample.tokens)
            # KL(π‖π_ref) ≈ mean over samples of S − S^ref (k1 on whole sequences)
            kl = masked_sum(sample.logprobs - ref_logp, sample.mask, dim=-1).mean()
            reward = task.reward(prompts, sample.tokens).mean()
        nll = -masked_sum(logp.detach(), demos.chosen_mask, dim=-1).mean()
        history.append(step, loss=loss, nll=nll, kl=kl, reward=reward, implicit_reward=metrics["implicit_reward"])
        if step == cfg.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnlearningConfig:
    """Config of ``unlearning``."""

    method: str = "ihl"  # "ihl" (inverted hinge) or "ga" (gradient ascent on the forget NLL)
    retain_coef: float = 0.0  # weight c of the retain NLL added to the unlearning loss
    lr: float = 0.01  # Adam learning rate of the unlearning phase
    steps: int = 20  # unlearning steps
    pretrain_steps: int = 40  # SFT steps before unlearning
    n_sequences: int = 48  # sequences sampled from the preference task's reference (all prompts)
    d_model: int = 32  # transformer width
    seed: int = 0  # seed of the data and the model
    device: str = "auto"  # "auto" = CUDA when available, else CPU


def _plot_unlearning(history: History):
    from lab.viz.figures import curves

    return curves(history, ["target_prob", "runner_up_prob", "retain_nll"])


def _lm_logits(model: Any, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """(N, T, V) logits predicting each response token."""
    P = prompts.shape[1]
    return model(torch.cat([prompts, responses], dim=1))[:, P - 1:-1]


@experiment("unlearning", UnlearningConfig,
            paper="Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs", arxiv="2408.06621",
            plot=_plot_unlearning, smoke={"steps": 2, "pretrain_steps": 2, "n_sequences": 8, "d_model": 8},
            summary="Forget one prompt's responses: inverted hinge vs gradient ascent")
def unlearning(cfg: UnlearningConfig) -> History:
    from lab.models.transformer import TinyTransformer

    for name in ("steps", "pretrain_steps", "n_sequences", "d_model"):
        check_int(name, getattr(cfg, name), minimum=1)
    check_positive("lr", cfg.lr)
    if cfg.method not in ("ihl", "ga"):
        raise ValueError(f"method must be 'ihl' or 'ga', got {cfg.method!r}")
    dev = resolve_device(cfg.device)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    task = PreferenceTask(seed=cfg.seed, device=dev)
    prompts = task.sample_prompts(cfg.n_sequences, generator)
    tokens, mask = task.sample_responses(prompts, generator)
    forget = prompts[:, 0] == 2                                                # prompt 0's responses
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = TinyTransformer(task.vocab_size, d_model=cfg.d_model, n_layers=1, n_heads=2,
                                max_len=1 + task.max_new_tokens, device=dev)
    labels = torch.where(mask, tokens, torch.full_like(tokens, -100))

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        logits = _lm_logits(model, prompts, tokens)                              # (N, T, V)
        logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]  # (N, T)
        return logits, logp

    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(cfg.pretrain_steps):                                        # fit every prompt (SFT)
        loss, _ = sft(forward()[1], mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history = History(meta={"algorithm": cfg.method, "seed": cfg.seed})
    for step in progress.steps(cfg.steps + 1, desc=cfg.method, history=history):
        logits, logp = forward()
        retain_nll, _ = sft(logp[~forget], mask[~forget])
        forget_nll, _ = sft(logp[forget], mask[forget])
        ihl, m = inverted_hinge(logits[forget], labels[forget])
        history.append(step, loss=ihl if cfg.method == "ihl" else -forget_nll, target_prob=m["ihl/target_prob"],
                       runner_up_prob=m["ihl/runner_up_prob"], target_top_frac=m["ihl/target_top_frac"],
                       forget_nll=forget_nll, retain_nll=retain_nll)
        if step == cfg.steps:
            break
        # unlearning loss: IHL(forget) or −NLL(forget) (gradient ascent), + c · NLL(retain)
        loss = (ihl if cfg.method == "ihl" else -forget_nll) + cfg.retain_coef * retain_nll
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


__all__ = ["PreferenceConfig", "preference_training", "StepConfig", "step_dpo_chains", "SFTConfig",
           "sft_divergences", "UnlearningConfig", "unlearning"]


# ---------------------------------------------------------------------------------------------
# The lesson's claims (notebook 10), checked by tests/test_claims.py
# ---------------------------------------------------------------------------------------------
from lab.claims import Claim  # noqa: E402  (claims sit after the experiments they run)

CLAIMS = [
    Claim(
        notebook="10_preference_learning", panel="dpo",
        text="Likelihood displacement: with β = 0.1, DPO keeps widening the margin until the chosen "
             "responses themselves lose log-probability (displacement D < 0 after 60 steps).",
        experiment="preference_training",
        config={"loss": "dpo", "beta": 0.1, "label_smoothing": 0.0, "length_normalize": False},
        control={"beta": 3.0},
        holds=lambda h: h["displacement"][-1] < 0.0 and h["margin"][-1] > h["margin"][0] + 1.0,
        control_text="β = 3: the loss saturates after a small margin and the chosen responses keep "
                     "(even gain) likelihood",
    ),
    Claim(
        notebook="10_preference_learning", panel="shape",
        text="The reward shape controls displacement: AlphaPO with α = −1 keeps the chosen responses' "
             "likelihood (D > −0.5 nat) where SimPO's log reward (α → 0) loses more than half a nat.",
        experiment="preference_training",
        config={"loss": "alphapo", "alpha": -1.0, "beta": 2.5, "gamma": 0.1, "label_smoothing": 0.0,
                "length_normalize": True},
        control={"loss": "simpo"},
        holds=lambda h: h["displacement"][-1] > -0.5,
        control_text="SimPO, the α → 0 limit: the log reward's gradient weight is the same on every "
                     "response, and the chosen ones are displaced",
    ),
    Claim(
        notebook="10_preference_learning", panel="steps",
        text="Step-DPO on (correct step, wrong step) pairs makes greedy chains correct: from 0, at "
             "least half of the chains are right after 40 steps.",
        experiment="step_dpo_chains", config={"init_std": 1.0},
        control={"init_std": 3.0},
        holds=lambda h: h["chain_accuracy"][0] == 0.0 and h["chain_accuracy"][-1] >= 0.5,
        control_text="init_std = 3: the reference is wrong by several logits per step, more than 40 "
                     "Adam steps of 0.1 move; the chains stay wrong",
    ),
    Claim(
        notebook="10_preference_learning", panel="sft",
        text="SFT's KL-to-reference term is constant in θ, so nothing holds the policy: KL(π‖π_ref) "
             "passes 0.5 nat in 60 steps; the paper's remedy, a 10× smaller learning rate, keeps it "
             "below 0.5.",
        experiment="sft_divergences", config={"divergence": "sft", "lr_factor": 1.0},
        control={"lr_factor": 0.1},
        holds=lambda h: h["kl"][-1] > 0.5,
        control_text="lr_factor = 0.1: the same objective moves 10× less per step",
    ),
    Claim(
        notebook="10_preference_learning", panel="unlearning",
        text="The inverted hinge loss is bounded: it stops once each forget token loses to its "
             "runner-up (forget NLL settles below 8 nats); gradient ascent keeps pushing it past 15.",
        experiment="unlearning", config={"method": "ihl", "retain_coef": 1.0},
        control={"method": "ga"},
        holds=lambda h: h["forget_nll"][-1] < 8.0 and h["runner_up_prob"][-1] > h["target_prob"][-1],
        control_text="gradient ascent on the forget NLL: unbounded, it drives the forget tokens' "
                     "probability towards 0 and the NLL up without limit",
    ),
]
