"""VADE: Beta posterior per prompt, Thompson-sampled p(1-p), two-scale prior decay."""
import pytest
import torch

from lab.registry import make
from lab.sampling.vade import VADE, beta_sample


def _observe(v: VADE, ids: torch.Tensor, p: torch.Tensor, G: int, g: torch.Generator) -> None:
    wins = (torch.rand(len(ids), G, generator=g) < p[ids, None]).double().sum(-1)
    v.update(ids, wins, G - wins)


# ---------------------------------------------------------------- hand-computed values
def test_update_and_two_scale_decay_by_hand():
    v = VADE(3, decay=0.5, stale_decay=0.5, stale_after=1)
    v.update(torch.tensor([0]), torch.tensor([3.0]), torch.tensor([1.0]))
    assert (v.alpha[0].item(), v.beta[0].item()) == (4.0, 2.0)          # prior (1, 1) + (3, 1)
    v.update(torch.tensor([1]), torch.tensor([1.0]), torch.tensor([1.0]))
    # prompt 0 shrinks halfway to the prior: 1 + 0.5·3, 1 + 0.5·1
    assert (v.alpha[0].item(), v.beta[0].item()) == (2.5, 1.5)
    v.update(torch.tensor([1]), torch.tensor([0.0]), torch.tensor([0.0]))
    # prompt 0 is now stale (unseen for 2 > 1 steps): factor 0.5·0.5
    assert v.alpha[0].item() == pytest.approx(1 + 0.25 * 1.5)
    assert v.beta[0].item() == pytest.approx(1 + 0.25 * 0.5)
    assert (v.alpha[1].item(), v.beta[1].item()) == (1.5, 1.5)           # prompt 1: slow scale only
    assert v.alpha[2].item() == v.beta[2].item() == 1.0                  # never seen: the prior
    assert v.mean()[0].item() == pytest.approx(1.375 / 2.5)


def test_spec_example_beta_9_1_vs_5_5():
    # E[p(1-p)] = ab / ((a+b)(a+b+1)): 9/110 vs 25/110; Thompson picks Beta(5, 5) far more often
    v = VADE(2, decay=1.0)
    v.alpha = torch.tensor([9.0, 5.0], dtype=torch.float64)
    v.beta = torch.tensor([1.0, 5.0], dtype=torch.float64)
    assert v.expected_variance().tolist() == pytest.approx([9 / 110, 25 / 110])
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([v.select(1, generator=g)[0] for _ in range(400)]).flatten()
    assert (picks == 1).float().mean() > 0.8


def test_beta_sample_moments_and_seed():
    a = torch.full((20000,), 2.0, dtype=torch.float64)
    b = torch.full((20000,), 6.0, dtype=torch.float64)
    x = beta_sample(a, b, torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(0.25, abs=0.01)                    # a / (a + b)
    assert x.var().item() == pytest.approx(2 * 6 / (64 * 9), abs=0.003)         # ab/((a+b)²(a+b+1))
    assert torch.equal(x, beta_sample(a, b, torch.Generator().manual_seed(0)))


def test_state_dict_round_trip():
    v = VADE(4)
    v.update(torch.tensor([0, 2]), torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]))
    w = make("sampler", "vade", 4)
    w.load_state_dict(v.state_dict())
    assert w.state_dict() == v.state_dict()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(v.select(2, generator=g1)[0], w.select(2, generator=g2)[0])


# ---------------------------------------------------------------- behaviour
def test_posterior_tracks_each_prompts_success_rate_and_its_drift():
    # Prepare: 6 prompts with known success rates, each rolled out G = 8 times per step
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], dtype=torch.float64)
    ids = torch.arange(6)
    tracking, frozen = VADE(6, decay=0.9), VADE(6, decay=1.0, stale_decay=1.0)
    # Execute: 40 steps, then the policy changes (success rates flip), 30 more steps
    for _ in range(40):
        _observe(tracking, ids, p, 8, g)
        _observe(frozen, ids, p, 8, g)
    err_before = (tracking.mean() - p).abs().max().item()
    for _ in range(30):
        _observe(tracking, ids, 1 - p, 8, g)
        _observe(frozen, ids, 1 - p, 8, g)
    # Assert: the decayed posterior follows the new rates; the undecayed one lags behind
    assert err_before < 0.12
    assert (tracking.mean() - (1 - p)).abs().max().item() < 0.15
    assert (frozen.mean() - (1 - p)).abs().mean().item() > 2 * (tracking.mean() - (1 - p)).abs().mean().item()


def test_thompson_selection_prefers_mixed_groups_without_extra_rollouts():
    # a pool where most prompts are always solved or never solved; VADE learns which are mixed
    g = torch.Generator().manual_seed(1)
    p = torch.cat([torch.zeros(12), torch.ones(12), torch.full((6,), 0.5)]).double()
    v = VADE(30)
    G, n = 8, 6
    nonzero_vade, nonzero_uniform = [], []
    for step in range(40):
        ids, _ = v.select(n, generator=g)
        wins = (torch.rand(n, G, generator=g) < p[ids, None]).double()
        v.update(ids, wins.sum(-1), G - wins.sum(-1))
        uniform = torch.randperm(30, generator=g)[:n]
        wins_u = (torch.rand(n, G, generator=g) < p[uniform, None]).double()
        if step >= 20:
            nonzero_vade.append(((wins.std(-1) > 0).double().mean()).item())
            nonzero_uniform.append(((wins_u.std(-1) > 0).double().mean()).item())
    share_vade = sum(nonzero_vade) / len(nonzero_vade)
    share_uniform = sum(nonzero_uniform) / len(nonzero_uniform)
    assert share_vade > 0.7 > share_uniform


# ---------------------------------------------------------------- edge cases and bad input
def test_never_seen_prompts_are_explored_first():
    v = VADE(10)
    v.update(torch.arange(5), torch.zeros(5), torch.full((5,), 40.0))     # 5 prompts: always wrong
    ids, metrics = v.select(5, generator=torch.Generator().manual_seed(0))
    assert (ids >= 5).float().mean() >= 0.8 and metrics["vade/unseen_frac"] >= 0.8
    assert v.select(0)[0].numel() == 0


@pytest.mark.parametrize("call, error, match", [
    (lambda: VADE(0), ValueError, "n_samples"),
    (lambda: VADE(3, prior=(0.0, 1.0)), ValueError, "prior"),
    (lambda: VADE(3, decay=1.5), ValueError, "decay"),
    (lambda: VADE(3).select(4), ValueError, "n"),
    (lambda: VADE(3).update(torch.tensor([0, 0]), torch.ones(2), torch.ones(2)), ValueError, "distinct"),
    (lambda: VADE(3).update(torch.tensor([0]), torch.tensor([-1.0]), torch.ones(1)), ValueError, "successes"),
    (lambda: VADE(3).update(torch.tensor([5]), torch.ones(1), torch.ones(1)), ValueError, "sample_ids"),
    (lambda: VADE(3).update(torch.tensor([0]), torch.ones(2), torch.ones(1)), ValueError, "successes"),
    (lambda: beta_sample(torch.ones(2), -torch.ones(2)), ValueError, "beta"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bookkeeping_stays_on_the_cpu_whatever_the_default_device():
    # the experiment may run on a GPU: α, β and the last-seen steps stay on the CPU, drawn from a CPU generator
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        sampler = VADE(4)
        ids, _ = sampler.select(2, generator=g)
        sampler.update(ids, torch.ones(2, dtype=torch.float64, device="cpu"),
                       torch.zeros(2, dtype=torch.float64, device="cpu"))
        sampler.load_state_dict(sampler.state_dict())
    assert ids.device.type == "cpu"
    assert {t.device.type for t in (sampler.alpha, sampler.beta, sampler.last_seen)} == {"cpu"}
    assert sampler.alpha[ids].tolist() == [2.0, 2.0]


def test_partial_credit_counts_as_fractional_successes():
    from types import SimpleNamespace

    from lab.experiments.curricula import _group_sums

    # two groups of G = 2: rewards (1, 0.5) and (0.25, 0): s = Σ R, f = Σ (1 − R)
    ro = SimpleNamespace(rewards=torch.tensor([1.0, 0.5, 0.25, 0.0]), group_size=2)
    succ, fail = _group_sums(ro)
    assert succ.tolist() == [1.5, 0.25] and fail.tolist() == [0.5, 1.75]
    v = VADE(2, decay=1.0)
    v.update(torch.tensor([0, 1]), succ.double(), fail.double())
    assert v.alpha.tolist() == [2.5, 1.25] and v.beta.tolist() == [1.5, 2.75]
