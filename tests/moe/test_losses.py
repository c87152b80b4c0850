"""Loss balancers: switch_aux, z_loss, seq_aux - hand-checked values, balanced values, peers."""
import math

import pytest
import torch

from lab.moe import SeqAux, SwitchAux, ZLoss
from lab.moe.seq_aux import seq_aux_loss
from lab.moe.switch_aux import switch_aux_loss
from lab.moe.z_loss import router_z_loss
from lab.registry import make


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_switch_aux_hand_checked_4_tokens_4_experts_top1():
    # Prepare: rows are softmax probabilities (log-probs are valid logits)
    logits = _logits([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]])
    indices = torch.tensor([[0], [1], [0], [3]])
    # f = [2, 1, 0, 1] / 4 ; P = [1.5, 1.1, 0.5, 0.9] / 4 ; E sum f P = 4 * 0.3125 = 1.25
    # Execute
    loss, stats = SwitchAux(4, coef=0.01).loss(logits, indices)
    # Assert
    assert stats["f"].tolist() == pytest.approx([0.5, 0.25, 0.0, 0.25])
    assert stats["P"].tolist() == pytest.approx([0.375, 0.275, 0.125, 0.225])
    assert loss.item() == pytest.approx(0.0125, abs=1e-12)


def test_switch_aux_hand_checked_top2():
    logits = _logits([[0.5, 0.3, 0.15, 0.05], [0.05, 0.5, 0.3, 0.15], [0.4, 0.35, 0.2, 0.05], [0.1, 0.2, 0.3, 0.4]])
    indices = torch.tensor([[0, 1], [1, 2], [0, 1], [3, 2]])
    # f = [2, 3, 2, 1] / 4 (sums to k = 2); P = [1.05, 1.35, 0.95, 0.65] / 4 ; 4 * 0.54375 = 2.175
    raw, stats = switch_aux_loss(logits, indices)
    assert stats["f"].sum().item() == pytest.approx(2.0)
    assert raw.item() == pytest.approx(2.175, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_switch_aux_perfect_balance_equals_coef_times_k(k):
    e, t = 4, 8
    logits = torch.zeros(t, e)  # P_i = 1/E
    indices = (torch.arange(t).unsqueeze(1) + torch.arange(k)) % e  # every expert gets kT/E slots
    loss, _ = SwitchAux(e, coef=0.01).loss(logits, indices)
    assert loss.item() == pytest.approx(0.01 * k, rel=1e-6)


def test_switch_aux_gradient_lowers_probability_of_overloaded_expert():
    logits = torch.zeros(4, 4, requires_grad=True)
    indices = torch.zeros(4, 1, dtype=torch.int64)  # everyone chose expert 0
    loss, _ = SwitchAux(4, coef=1.0).loss(logits, indices)
    loss.backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_switch_aux_matches_hugging_face_mixtral():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    g = torch.Generator().manual_seed(0)
    b, s, e, k = 3, 5, 6, 2
    logits = torch.randn(b, s, e, generator=g)
    indices = logits.softmax(-1).topk(k, -1).indices
    ours, _ = switch_aux_loss(logits, indices)
    theirs = mixtral.load_balancing_loss_func((logits.reshape(-1, e),), e, k)
    assert ours.item() == pytest.approx(float(theirs), abs=1e-6)
    mask = torch.ones(b, s, dtype=torch.int64)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    ours_m, _ = switch_aux_loss(logits, indices, attention_mask=mask)
    theirs_m = mixtral.load_balancing_loss_func((logits.reshape(-1, e),), e, k, attention_mask=mask)
    assert ours_m.item() == pytest.approx(float(theirs_m), abs=1e-6)


def test_z_loss_hand_checked_and_matches_hugging_face():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    # logsumexp = log 2 and log 4 = 2 log 2 -> mean of squares = 2.5 (log 2)^2
    assert router_z_loss(logits).item() == pytest.approx(2.5 * math.log(2.0) ** 2)
    loss, stats = ZLoss(2, coef=1e-3).loss(logits, torch.tensor([[0], [0]]))
    assert loss.item() == pytest.approx(2.5e-3 * math.log(2.0) ** 2)
    switch = pytest.importorskip("transformers.models.switch_transformers.modeling_switch_transformers")
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(1))
    assert router_z_loss(x).item() == pytest.approx(float(switch.router_z_loss_func(x)), abs=1e-6)


def test_z_loss_drives_the_log_partition_to_zero():
    logits = (3.0 * torch.randn(16, 4, generator=torch.Generator().manual_seed(0)) + 5.0).requires_grad_()
    start = router_z_loss(logits.detach())
    opt = torch.optim.SGD([logits], lr=8.0)  # the loss is a mean over 16 tokens
    for _ in range(60):
        opt.zero_grad()
        ZLoss(4, coef=1.0).loss(logits, torch.zeros(16, 1, dtype=torch.int64))[0].backward()
        opt.step()
    assert router_z_loss(logits.detach()) < 0.01 * start
    assert torch.logsumexp(logits.detach(), -1).abs().max() < 0.5


def test_seq_aux_hand_checked_two_sequences():
    # seq A: both tokens pick expert 0 -> f = [2, 0], P = [0.7, 0.3] -> 1.4
    # seq B: tokens pick 1 and 0      -> f = [1, 1], P = [0.45, 0.55] -> 1.0 ; mean 1.2
    logits = _logits([[[0.8, 0.2], [0.6, 0.4]], [[0.2, 0.8], [0.7, 0.3]]])
    indices = torch.tensor([[[0], [0]], [[1], [0]]])
    raw, stats = seq_aux_loss(logits, indices)
    assert stats["f_seq"].tolist() == [[2.0, 0.0], [1.0, 1.0]]
    assert raw.item() == pytest.approx(1.2)
    loss, _ = SeqAux(2, coef=1e-4).loss(logits, indices)
    assert loss.item() == pytest.approx(1.2e-4)
    # the batch-pooled Switch statistic sees a milder imbalance (2 * (0.75*0.575 + 0.25*0.425) = 1.075)
    assert switch_aux_loss(logits, indices)[0].item() == pytest.approx(1.075)


def test_seq_aux_balanced_value_is_coef():
    logits = torch.zeros(3, 8, 4)
    indices = (torch.arange(8).reshape(1, 8, 1) + torch.arange(2)) % 4
    loss, _ = SeqAux(4, coef=1e-4).loss(logits, indices.expand(3, 8, 2))
    assert loss.item() == pytest.approx(1e-4)


def test_seq_aux_sigmoid_scores_are_renormalized():
    logits = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(3))
    indices = logits.topk(2, -1).indices
    raw, stats = seq_aux_loss(logits, indices, score_fn="sigmoid")
    s = logits.sigmoid()
    assert torch.allclose(stats["P_seq"], (s / s.sum(-1, keepdim=True)).mean(1))
    assert torch.isfinite(raw)


@pytest.mark.parametrize("name", ["switch_aux", "z_loss", "seq_aux"])
def test_loss_balancers_reject_bad_input(name):
    bal = make("balancer", name, 4)
    good = torch.zeros(5, 4)
    with pytest.raises(ValueError, match="router_logits"):
        bal.loss(torch.zeros(5, 3), torch.zeros(5, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        bal.loss(torch.full((5, 4), float("nan")), torch.zeros(5, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="indices"):
        bal.loss(good, torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="indices"):
        bal.loss(good, torch.full((5, 1), 7))
    with pytest.raises(TypeError, match="indices"):
        bal.loss(good, torch.zeros(5, 1))
    with pytest.raises(ValueError, match="coef"):
        make("balancer", name, 4, coef=-1.0)


def test_seq_aux_sees_sequence_imbalance_that_the_batch_loss_cannot():
    # Prepare: 4 sequences of 4 tokens; every token of sequence b prefers expert b (p = 0.7)
    probs = torch.full((4, 4, 4), 0.1, dtype=torch.float64)
    probs[torch.arange(4), :, torch.arange(4)] = 0.7
    logits = torch.log(probs).requires_grad_()
    indices = torch.arange(4).reshape(4, 1, 1).expand(4, 4, 1)
    # Execute
    batch, _ = switch_aux_loss(logits, indices)
    seq, _ = seq_aux_loss(logits, indices)
    # Assert: the batch is perfectly balanced -> the Switch loss sits at its balanced value k = 1
    # and gives no gradient (f uniform, sum_i P_i = 1); per sequence f = [4, 0, 0, 0] -> 4 * 0.7
    assert batch.item() == pytest.approx(1.0)
    assert torch.autograd.grad(batch, logits)[0].abs().max() < 1e-12
    assert seq.item() == pytest.approx(2.8)
    assert torch.autograd.grad(seq, logits)[0].abs().max() > 0.01


@pytest.mark.parametrize("name", ["switch_aux", "z_loss", "seq_aux"])
@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 4), (0, 3, 4)])
def test_zero_token_batch_gives_exactly_zero_loss_and_zero_gradient(name, shape):
    # documented choice: nothing routed -> nothing out of balance (HF's helper returns NaN here)
    logits = torch.zeros(shape, requires_grad=True)
    indices = torch.zeros(shape[:-1] + (2,), dtype=torch.int64)
    loss, stats = make("balancer", name, 4).loss(logits, indices)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == shape
    assert all(torch.isfinite(v).all() for v in stats.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("name", ["switch_aux", "z_loss", "seq_aux"])
def test_all_padding_gives_zero_and_padding_is_ignored(name):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, generator=g)
    indices = logits.topk(2, -1).indices
    bal = make("balancer", name, 4, coef=1.0)
    assert bal.loss(logits, indices, torch.zeros(2, 5))[0].item() == 0.0
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    masked = bal.loss(logits, indices, mask)[0]
    junk = logits.clone()
    junk[1, 3:] = 50.0 * torch.randn(2, 4, generator=g)  # whatever sits in the padding ...
    assert bal.loss(junk, indices, mask)[0].item() == pytest.approx(masked.item(), rel=1e-6)  # ... is ignored
    assert masked.item() != pytest.approx(bal.loss(logits, indices)[0].item(), rel=1e-6)


@pytest.mark.parametrize("name", ["switch_aux", "z_loss", "seq_aux"])
def test_bad_attention_masks_are_named(name):
    bal = make("balancer", name, 4)
    logits, indices = torch.zeros(2, 5, 4), torch.zeros(2, 5, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        bal.loss(logits, indices, torch.ones(5, 2))
    with pytest.raises(ValueError, match="attention_mask must hold 0"):
        bal.loss(logits, indices, torch.full((2, 5), 0.5))


def test_switch_aux_pools_layers_like_hugging_face_several_layers_and_mask():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    g = torch.Generator().manual_seed(4)
    n_layers, b, s, e, k = 3, 2, 6, 8, 2
    # layers with very different balance: the pooled f P is not the mean of per-layer f P
    logits = torch.randn(n_layers, b, s, e, generator=g) * torch.tensor([0.5, 2.0, 4.0]).reshape(3, 1, 1, 1)
    indices = logits.softmax(-1).topk(k, -1).indices
    ours, _ = switch_aux_loss(logits, indices)
    theirs = mixtral.load_balancing_loss_func(tuple(logits.reshape(n_layers, -1, e)), e, k)
    assert ours.item() == pytest.approx(float(theirs), abs=1e-6)
    per_layer = [switch_aux_loss(logits[i], indices[i])[0].item() for i in range(n_layers)]
    assert abs(sum(per_layer) - ours.item()) > 1.0  # summing the layers would be ~L times too strong
    assert abs(sum(per_layer) / n_layers - ours.item()) > 1e-3  # and pooling is not averaging
    mask = torch.ones(b, s, dtype=torch.int64)
    mask[1, 2:] = 0
    ours_m, _ = switch_aux_loss(logits, indices, attention_mask=mask)  # (B, S) broadcast over layers
    theirs_m = mixtral.load_balancing_loss_func(tuple(logits.reshape(n_layers, -1, e)), e, k, attention_mask=mask)
    assert ours_m.item() == pytest.approx(float(theirs_m), abs=1e-6)


def test_z_loss_pools_layers_like_hugging_face_switch_transformers():
    switch = pytest.importorskip("transformers.models.switch_transformers.modeling_switch_transformers")
    layers = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(2)) * torch.tensor([1.0, 3.0, 6.0]).reshape(3, 1, 1, 1)
    hf = switch.router_z_loss_func(torch.cat(tuple(layers), dim=1))  # HF concatenates the layers' tokens
    assert router_z_loss(layers).item() == pytest.approx(float(hf), rel=1e-6)


def test_seq_aux_pools_layers_as_the_mean_over_layer_sequences():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 2, 6, 4, generator=g)
    indices = logits.topk(2, -1).indices
    stacked, stats = seq_aux_loss(logits, indices)
    per_layer = torch.stack([seq_aux_loss(logits[i], indices[i])[0] for i in range(3)])
    assert stacked.item() == pytest.approx(per_layer.mean().item(), rel=1e-6)
    assert stats["f_seq"].shape == (3, 2, 4)


def test_seq_aux_mask_hand_checked():
    # sequence 1 has one real token (expert 1): f = [0, 2], P = [0.2, 0.8] -> 1.6 ; sequence 0 as before: 1.4
    logits = _logits([[[0.8, 0.2], [0.6, 0.4]], [[0.2, 0.8], [0.7, 0.3]]])
    indices = torch.tensor([[[0], [0]], [[1], [0]]])
    raw, stats = seq_aux_loss(logits, indices, attention_mask=torch.tensor([[1, 1], [1, 0]]))
    assert stats["f_seq"].tolist() == [[2.0, 0.0], [0.0, 2.0]]
    assert raw.item() == pytest.approx((1.4 + 1.6) / 2)


def test_switch_aux_counts_the_given_choices_not_the_argmax():
    # uniform probabilities, but a (biased) router sent every token to expert 2: f follows the dispatch
    raw, stats = switch_aux_loss(torch.zeros(4, 4), torch.full((4, 1), 2))
    assert stats["f"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert raw.item() == pytest.approx(4 * 1.0 * 0.25)


def test_seq_aux_max_violation_is_the_mean_over_sequences_of_max_f_minus_one():
    # two sequences of 2 tokens, E = 2, k = 1: one balanced (max f = 1), one all on expert 0 (max f = 2)
    logits = torch.zeros(2, 2, 2)
    indices = torch.tensor([[[0], [1]], [[0], [0]]])
    _, stats = SeqAux(2).loss(logits, indices)
    assert stats["seq_max_violation"].item() == pytest.approx((0.0 + 1.0) / 2)
