"""Panel builders for lessons with several views of one experiment family.

Unlike the figure builders of :mod:`lab.viz` (History in, ``go.Figure`` out, no experiment
imported), these build live panels, so they name experiments and their configs: they sit one
layer above :mod:`lab.experiments`, beside :mod:`lab.viz.panel`.

- :func:`segment_panel`: SPO, EGAE/T-PPO, HPT, PSR/NSR, COPO and GRPO-D views for notebook 07.
"""
from __future__ import annotations

import dataclasses

from lab.viz.figures import curves
from lab.viz.panel import Panel, panel
from lab.viz.segments import grpo_d_plot, sign_figure

VIEWS = ("spo", "egae", "hpt", "sign", "copo", "grpo_d")
"""The views :func:`segment_panel` builds."""


def segment_panel(view: str = "spo", run: bool = True) -> Panel:
    """A live panel for one view (see :data:`VIEWS`); each re-runs in about a second or two.

    ``run=False`` builds the controls without the first run (it starts on the first change).
    """
    from lab.experiments.policy import PolicyConfig
    from lab.experiments.segments import copo_runs, grpo_d_run, sign_runs

    bandit = "token_bandit(probs=(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0))"
    if view == "spo":
        return panel("segment_advantages", {"rollouts": (4, 24, 2), "prob_threshold": (0.3, 1.0, 0.05),
                                             "seed": (0, 20, 1)}, run=run)
    if view == "egae":
        return panel("truncation_window", {"lam": (0.5, 1.0, 0.05), "value_rollouts": (1, 16, 1),
                                            "seed": (0, 20, 1)}, run=run)
    if view == "hpt":
        return panel("hybrid_post_training", {"gate": (-1, 8, 1), "sft_coef": (0.0, 2.0, 0.1),
                                               "steps": (5, 60, 5), "seed": (0, 20, 1)}, run=run)
    if view == "sign":
        cfg = PolicyConfig(task=bandit, lr=0.5, steps=40)
        return panel(sign_runs, {"lr": (0.05, 1.0, 0.05), "steps": (10, 80, 10), "seed": (0, 20, 1)},
                     sign_figure, config=cfg, run=run)
    if view == "copo":
        cfg = PolicyConfig(task="token_bandit(probs=(1.0, 0.0))", group_size=4, steps=25)
        return panel(copo_runs, {"lr": (0.05, 1.0, 0.05), "steps": (10, 60, 5), "seed": (0, 20, 1)},
                     lambda runs: curves(runs, ["reward", "entropy"]), config=cfg, run=run)
    if view == "grpo_d":
        cfg = dataclasses.replace(PolicyConfig(), steps=30, lr=0.3)
        return panel(grpo_d_run, {"steps": (10, 80, 10), "lr": (0.05, 1.0, 0.05)}, grpo_d_plot,
                     config=cfg, run=run)
    raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")


__all__ = ["VIEWS", "segment_panel"]
