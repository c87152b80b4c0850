"""lab.rl.logprobs: chunked log-probs and entropies equal the naive full log-softmax."""
import pytest
import torch

import lab.rl
from lab.models.transformer import TinyTransformer
from lab.rl.token_logprobs import naive_logprobs


class _LogitsOnly(torch.nn.Module):
    """A model that only returns a logits tensor (no hidden-state access)."""

    def __init__(self, vocab=13, d=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.out = torch.nn.Linear(d, vocab)

    def forward(self, input_ids):
        h = torch.cumsum(self.emb(input_ids), dim=1)        # causal: position t sees tokens <= t
        return self.out(torch.tanh(h))


def _inputs(vocab, B=3, L=9, seed=0):
    return torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", [1, 3, 8, None])
@pytest.mark.parametrize("make_model", [lambda: TinyTransformer(17, d_model=16, max_len=12), _LogitsOnly])
def test_chunked_equals_naive_values_and_gradients(chunk_size, make_model):
    torch.manual_seed(0)
    model = make_model()
    vocab = 17 if isinstance(model, TinyTransformer) else 13
    ids = _inputs(vocab)
    lp, ent = lab.rl.logprobs(model, ids, chunk_size=chunk_size, temperature=0.7)
    lp_ref, ent_ref = naive_logprobs(model, ids, temperature=0.7)
    assert ent.requires_grad
    assert lp.shape == (3, 8) and ent.shape == (3, 8)
    assert torch.allclose(lp, lp_ref, atol=1e-5) and torch.allclose(ent, ent_ref, atol=1e-5)
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((lp * w).sum(), list(model.parameters()), retain_graph=True)
    grads_ref = torch.autograd.grad((lp_ref * w).sum(), list(model.parameters()), retain_graph=True)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-5)
    # the entropy's gradient (∂H/∂z = −p (log p + H)), alone and together with the log-probs'
    v = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    for objective, objective_ref in [((ent * v).sum(), (ent_ref * v).sum()),
                                     ((lp * w + ent * v).sum(), (lp_ref * w + ent_ref * v).sum())]:
        grads = torch.autograd.grad(objective, list(model.parameters()), retain_graph=True)
        grads_ref = torch.autograd.grad(objective_ref, list(model.parameters()), retain_graph=True)
        for g, g_ref in zip(grads, grads_ref):
            assert torch.allclose(g, g_ref, atol=1e-5)


def test_response_mask_zeroes_prompt_positions():
    torch.manual_seed(0)
    model = TinyTransformer(11, d_model=16, max_len=10)
    ids = _inputs(11, L=7)
    response = torch.zeros(3, 7, dtype=torch.bool)
    response[:, 4:] = True
    response[2, 6] = False
    lp, ent = lab.rl.logprobs(model, ids, response_mask=response, chunk_size=2)
    lp_ref, _ = naive_logprobs(model, ids)
    valid = response[:, 1:]
    assert torch.allclose(lp[valid], lp_ref[valid], atol=1e-5)
    assert (lp[~valid] == 0).all() and (ent[~valid] == 0).all()


def test_precomputed_hidden_states_give_the_same_logprobs_and_gradients():
    # a value head and the LM head can share one forward pass: logprobs(..., hidden=h)
    torch.manual_seed(0)
    model = TinyTransformer(11, d_model=16, max_len=10)
    ids = _inputs(11, L=7)
    h = model.forward_hidden(ids)
    lp, ent = lab.rl.logprobs(model, ids, chunk_size=2, hidden=h)
    lp_ref, ent_ref = naive_logprobs(model, ids)
    assert torch.allclose(lp, lp_ref, atol=1e-5) and torch.allclose(ent, ent_ref, atol=1e-5)
    g = torch.autograd.grad(lp.sum(), list(model.parameters()))
    g_ref = torch.autograd.grad(lp_ref.sum(), list(model.parameters()))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g, g_ref))
    with pytest.raises(ValueError, match="hidden"):
        lab.rl.logprobs(model, ids, hidden=h[:, :-1])
    with pytest.raises(TypeError, match="hidden"):
        lab.rl.logprobs(_LogitsOnly(), _inputs(13), hidden=torch.zeros(3, 9, 8))


def test_bad_inputs():
    model = TinyTransformer(11, d_model=16, max_len=10)
    with pytest.raises(ValueError, match="input_ids"):
        lab.rl.logprobs(model, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="response_mask"):
        lab.rl.logprobs(model, torch.zeros(2, 5, dtype=torch.long), response_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        lab.rl.logprobs(model, torch.zeros(2, 5, dtype=torch.long), chunk_size=0)
    with pytest.raises(TypeError, match="logits"):
        lab.rl.logprobs(lambda ids: ids.float(), torch.zeros(2, 5, dtype=torch.long))


@pytest.mark.slow
def test_hf_gpt2_grpo_step_equals_naive():
    """A random-weight GPT-2 takes a GRPO step through lab.rl.logprobs and lab.optim.AdamW;
    loss, gradients and the loss after the step equal those of the naive log-softmax path."""
    transformers = pytest.importorskip("transformers")
    from lab.optim import AdamW
    from lab.rl.grpo import grpo_advantages, grpo_loss

    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    twin = transformers.GPT2LMHeadModel(config)
    twin.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    prompt_len, B = 5, 4
    ids = torch.randint(0, 64, (B, prompt_len + 6), generator=g)
    attention = torch.ones_like(ids)
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, prompt_len:] = True
    response[1, -2:] = False                                     # a shorter response
    advantages, _ = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    mask = response[:, 1:]

    def token_logprobs(net, use_lab):
        if use_lab:
            return lab.rl.logprobs(net, ids, attention, response, chunk_size=3)[0]
        return naive_logprobs(net, ids, attention)[0]

    results = []
    for net, use_lab in ((model, True), (twin, False)):
        opt = AdamW(net.parameters(), lr=1e-3)
        with torch.no_grad():
            old = token_logprobs(net, use_lab)
        ref = old - 0.05 * mask                                      # a reference slightly off-policy
        loss, metrics = grpo_loss(token_logprobs(net, use_lab), old, advantages, mask, ref_logprobs=ref)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in net.parameters()]
        opt.step()
        with torch.no_grad():
            after, _ = grpo_loss(token_logprobs(net, False), old, advantages, mask, ref_logprobs=ref)
        results.append((loss.item(), grads, after.item(), metrics))
    (loss_a, grads_a, after_a, metrics), (loss_b, grads_b, after_b, _) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    for (name, _), ga, gb in zip(model.named_parameters(), grads_a, grads_b):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6), name
    assert after_a == pytest.approx(after_b, abs=1e-5) and after_a < loss_a     # the step helped
    assert metrics["kl"] > 0 and metrics["num_tokens"] == mask.sum().item()
