"""Panel builders for lessons with several views of one experiment family.

Unlike the figure builders of :mod:`lab.viz` (History in, ``go.Figure`` out, no experiment
imported), these build live panels, so they name experiments and their configs: they sit one
layer above :mod:`lab.experiments`, beside :mod:`lab.viz.panel`.

- :func:`segment_panel`: SPO, EGAE/T-PPO, HPT, PSR/NSR, COPO and GRPO-D views for notebook 07.
"""
from __future__ import annotations

from lab.viz.panel import Panel, panel
from lab.viz.segments import grpo_d_plot, sign_figure

VIEWS = ("spo", "egae", "hpt", "sign", "copo", "grpo_d")
"""The views :func:`segment_panel` builds."""


def segment_panel(view: str = "spo", run: bool = True) -> Panel:
    """A live panel for one view (see :data:`VIEWS`); each re-runs in about a second or two.

    Each opens on the config of its claim (``lab.experiments.segments.CLAIMS``), shows the claim
    above the controls and offers "the paper's effect" / "the control" presets.
    ``run=False`` builds the controls without the first run (it starts on the first change).
    """
    from lab.claims import claims_for
    from lab.experiments.segments import COPO_BANDIT, GRPO_D, SIGN_BANDIT, copo_runs, grpo_d_run, sign_runs
    from lab.viz.segments import copo_figure

    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    claims = claims_for("07_group_relative_zoo", view)
    config = claims[0].configured("effect")
    if view == "spo":
        return panel("segment_advantages", {"rollouts": (4, 24, 2), "prob_threshold": (0.3, 1.0, 0.05),
                                             "split_budget": bool, "seed": (0, 20, 1)},
                     config=config, claims=claims, run=run)
    if view == "egae":
        return panel("truncation_window", {"lam": (0.5, 1.0, 0.05), "gamma": (0.0, 1.0, 0.05),
                                            "value_rollouts": (1, 16, 1), "seed": (0, 20, 1)},
                     config=config, claims=claims, run=run)
    if view == "hpt":
        return panel("hybrid_post_training", {"gate": (-1, 8, 1), "sft_coef": (0.0, 2.0, 0.1),
                                               "steps": (5, 60, 5), "seed": (0, 20, 1)},
                     config=config, claims=claims, run=run,
                     presets={"pure SFT (gate = G)": {"gate": 8}})
    if view == "sign":
        one_arm = "token_bandit(probs=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))"
        return panel(sign_runs, {"task": [SIGN_BANDIT, one_arm], "lr": (0.05, 1.0, 0.05),
                                 "steps": (10, 100, 10), "seed": (0, 20, 1)},
                     sign_figure, config=config, claims=claims, run=run)
    if view == "copo":
        return panel(copo_runs, {"loss": ["copo", "copo(blend='soft_forced')", "copo(blend='local')"],
                                 "lr": (0.05, 1.0, 0.05), "steps": (10, 60, 5), "seed": (0, 20, 1)},
                     copo_figure, config=config, claims=claims, run=run)
    return panel(grpo_d_run, {"loss": [GRPO_D, "grpo_d(beta_min=0.0, beta_max=0.02)",
                                       "grpo_d(beta_min=0.1, beta_max=0.1)"],
                              "steps": (10, 80, 10), "lr": (0.05, 1.0, 0.05)},
                 grpo_d_plot, config=config, claims=claims, run=run)


__all__ = ["VIEWS", "segment_panel"]
