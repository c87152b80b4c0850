"""IBCL, USEFUL and the continual pre-training batch plans."""
import numpy as np
import pytest
import torch

from lab.continual.cpt import cpt_batches
from lab.continual.ibcl import IBCL, Gaussian, laplace_logistic, logistic_loss
from lab.continual.useful import hard_examples, kmeans, useful_upsample
from lab.experiments import run
from toy_envs.tasks import rotated_logistic_tasks


# ---- IBCL ----------------------------------------------------------------------------------
def _kb(d=0.1):
    kb = IBCL(d=d)
    tasks = rotated_logistic_tasks(3, 200, seed=0)
    for x, y in tasks:
        kb.add_task(x, y)
    return kb, tasks


def test_ibcl_hand_computed_preference_combination():
    # Prepare: two extreme points N((1, 0), I) and N((0, 2), 3 I), one per task
    kb = IBCL()
    eye = torch.eye(2, dtype=torch.float64)
    kb.extremes = [Gaussian(torch.tensor([1.0, 0.0], dtype=torch.float64), eye),
                   Gaussian(torch.tensor([0.0, 2.0], dtype=torch.float64), 3 * eye)]
    kb.task_to_extreme = [0, 1]
    # Execute
    q = kb.preference_distribution([0.25, 0.75])
    # Assert: mean 0.25 (1, 0) + 0.75 (0, 2), covariance 0.25 I + 0.75 * 3 I
    torch.testing.assert_close(q.mean, torch.tensor([0.25, 1.5], dtype=torch.float64))
    torch.testing.assert_close(q.cov, 2.5 * torch.eye(2, dtype=torch.float64))


def test_ibcl_vertex_preference_is_the_task_posterior_and_extremes_are_not_modified():
    kb, tasks = _kb()
    first = kb.extremes[0].mean.clone()
    mean, _ = laplace_logistic(*tasks[0], torch.zeros(3, dtype=torch.float64), 10.0)
    torch.testing.assert_close(kb.model_for([1.0, 0.0, 0.0]), mean)
    kb.add_task(*tasks[1])
    torch.testing.assert_close(kb.extremes[0].mean, first)
    # a repeated task is within d of its extreme point: no new extreme point
    assert len(kb.extremes) == 3 and kb.task_to_extreme[-1] == 1


def test_ibcl_tradeoff_is_monotone():
    """Moving weight from task 3 to task 2 lowers task 2's loss and raises task 3's, monotonically."""
    kb, tasks = _kb()
    losses = np.array([[logistic_loss(kb.model_for([0.0, a, 1 - a]), x, y) for x, y in tasks[1:]]
                       for a in np.linspace(0, 1, 11)])
    assert np.all(np.diff(losses[:, 0]) < 0) and np.all(np.diff(losses[:, 1]) > 0)


def test_ibcl_hdr_samples_lie_in_the_ellipsoid(generator):
    kb, _ = _kb()
    w = [0.2, 0.3, 0.5]
    q = kb.preference_distribution(w)
    s = kb.hdr_samples(w, alpha=0.1, n=200, generator=generator)
    diff = s - q.mean
    maha = (diff @ torch.linalg.inv(q.cov) * diff).sum(1)
    from scipy.stats import chi2
    assert s.shape == (200, 3) and maha.max() <= chi2.ppf(0.9, 3) + 1e-9


def test_ibcl_experiment_front_is_close_to_per_preference_training():
    h = run("ibcl_tradeoffs")
    ibcl, base = h["ibcl_loss"], h["baseline_loss"]
    w = h["w"]
    # weighted loss of the zero-shot model within a modest factor of the trained one
    ratio = (w * ibcl).sum(1) / (w * base).sum(1)
    assert np.all(ratio >= 1 - 1e-6) and np.median(ratio) < 1.6


def test_ibcl_bad_input():
    kb = IBCL()
    with pytest.raises(ValueError, match="empty"):
        kb.model_for([1.0])
    kb, _ = _kb()
    with pytest.raises(ValueError, match="w must lie on the simplex"):
        kb.model_for([0.5, 0.6, -0.1])
    with pytest.raises(ValueError, match="w must have shape"):
        kb.model_for([1.0])
    with pytest.raises(ValueError, match="d must"):
        IBCL(d=-1.0)


# ---- USEFUL --------------------------------------------------------------------------------
def test_useful_hand_computed_clusters_and_upsampling():
    # class 0: two confident points (low loss) and two unsure ones; class 1: the same pattern
    logits = torch.tensor([[5.0, 0.0], [5.2, 0.0], [0.2, 0.0], [0.0, 0.1],
                           [0.0, 6.0], [0.0, 6.1], [0.1, 0.0], [0.0, 0.3]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    indices, hard = useful_upsample(logits, labels)
    assert hard.tolist() == [False, False, True, True, False, False, True, True]
    assert indices.tolist() == [0, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7]
    assert useful_upsample(logits, labels, factor=1)[0].tolist() == list(range(8))


def test_kmeans_separates_two_blobs(generator):
    pts = torch.cat([torch.randn(20, 2, generator=generator), torch.randn(20, 2, generator=generator) + 10])
    assign = kmeans(pts, pts[[0, 39]].clone())
    assert assign[:20].eq(0).all() and assign[20:].eq(1).all()


def test_useful_edge_cases_and_bad_input():
    assert not hard_examples(torch.zeros(1, 3), torch.tensor([2])).any()   # fewer than k examples
    with pytest.raises(ValueError, match="logits"):
        useful_upsample(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(TypeError, match="labels"):
        useful_upsample(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="factor"):
        useful_upsample(torch.zeros(2, 2), torch.tensor([0, 1]), factor=0)


@pytest.mark.slow
def test_useful_raises_accuracy_on_complex_only_points():
    gains, purity = [], []
    for seed in range(3):
        h = run("useful_simplicity", seed=seed)
        r = h.artifacts["results"]
        gains.append(r["useful"]["hard_accuracy"] - r["plain"]["hard_accuracy"])
        purity.append(h.artifacts["hard_purity"] - h.artifacts["complex_only_rate"])
    assert np.mean(gains) > 0.003 and min(gains) >= 0.0
    assert np.mean(purity) > 0.1        # the early clustering finds complex-only points
    sam = run("useful_simplicity", optimizer="sam(rho=0.05)", epochs=4).artifacts["results"]
    assert sam["useful"]["hard_accuracy"] > 0.8 and sam["plain"]["accuracy"] > 0.9


# ---- continual pre-training ----------------------------------------------------------------
def test_cpt_batches_hand_checked_plans(generator):
    quality = torch.tensor([0.1, 0.9, 0.5, 0.8, 0.2])
    plan = cpt_batches(5, 100, 3, 4, subset="quality", subset_fraction=0.4, mix=0.25,
                       quality=quality, generator=generator)
    assert len(plan) == 3
    for new, old in plan:
        assert set(new.tolist()) <= {1, 3} and len(new) == 3 and len(old) == 1
        assert 0 <= int(old) < 100
    single = cpt_batches(6, 0, 3, 2, generator=generator)
    assert sorted(torch.cat([n for n, _ in single]).tolist()) == list(range(6))   # one pass
    rand = cpt_batches(10, 0, 5, 4, subset="random", subset_fraction=0.3, generator=generator)
    assert len(set(torch.cat([n for n, _ in rand]).tolist())) == 3                 # several epochs


def test_cpt_bad_input():
    with pytest.raises(ValueError, match="quality"):
        cpt_batches(5, 5, 1, 2, subset="quality")
    with pytest.raises(ValueError, match="mix"):
        cpt_batches(5, 5, 1, 2, mix=1.0)
    with pytest.raises(ValueError, match="n_old"):
        cpt_batches(5, 0, 1, 2, mix=0.5)
    with pytest.raises(ValueError, match="subset"):
        cpt_batches(5, 5, 1, 2, subset="best")
    with pytest.raises(TypeError, match="steps"):
        cpt_batches(5, 5, 1.0, 2)


@pytest.mark.slow
def test_cpt_strategies_on_digits():
    """Mixture keeps the old domain; the high-quality subset learns the noisy new domain better."""
    def summary(**kw):
        rows = [run("cpt_digits", seed=s, **kw).artifacts["summary"] for s in range(3)]
        return {k: np.mean([r[k] for r in rows]) for k in rows[0]}
    base, mixed, quality = summary(), summary(mix=0.25), summary(subset="quality")
    assert mixed["old_final"] > base["old_final"] + 0.01
    assert quality["new_final"] > base["new_final"] + 0.1
    assert base["old_min"] < base["old_before"]


def test_cpt_epochs_are_reshuffled_passes_mix_draws_with_replacement_and_default_seed():
    plan = cpt_batches(3, 0, 3, 2, generator=torch.Generator().manual_seed(1))
    seen = torch.cat([n for n, _ in plan]).tolist()
    assert sorted(seen[:3]) == [0, 1, 2] and sorted(seen[3:]) == [0, 1, 2]   # two whole passes
    (_, old), = cpt_batches(4, 2, 1, 10, mix=0.5)
    assert len(old) == 5 and set(old.tolist()) <= {0, 1}                     # 5 draws from 2: repeats
    a = cpt_batches(10, 5, 3, 4, subset="random", mix=0.5)
    b = cpt_batches(10, 5, 3, 4, subset="random", mix=0.5, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))   # seed 0 by default


def test_ibcl_prior_of_a_new_task_is_the_previous_tasks_extreme_point():
    kb, tasks = _kb(d=0.0)
    second, _ = laplace_logistic(*tasks[1], kb.extremes[0].mean, 10.0)
    torch.testing.assert_close(kb.extremes[1].mean, second)
