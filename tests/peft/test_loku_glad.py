"""LoKU's FILA initialization and GLAD's SAM-steered gradient."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lab.peft.loku as loku
from lab.peft import GLAD, FILALinear, adapters, apply, fila_init, fila_initialize, fisher_diagonal
from lab.preference.inverted_hinge import inverted_hinge


def test_loku_reuses_the_inverted_hinge_loss():
    assert loku.inverted_hinge is inverted_hinge


def test_fila_with_uniform_fisher_is_truncated_svd_and_keeps_output():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    w = base.weight.detach().clone()
    layer = FILALinear(base, rank=2, alpha=4.0)
    x = torch.randn(4, 6)
    before = F.linear(x, w, base.bias)
    ones = torch.ones_like(w)
    layer.fila_init(ones, ones)                                  # Imp uniform -> plain rank-2 SVD
    # the adapter holds the best rank-2 approximation of W; the base keeps the rest
    u, s, vh = torch.linalg.svd(w)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    assert torch.allclose(layer.delta_weight(), best, atol=1e-3)
    assert torch.allclose(layer(x), before, atol=1e-5)          # model unchanged at init


def test_fisher_diagonal_hand_computed():
    # L = 0.5 * (w x - y)^2 with w = 1, batches (x=1, y=0) n=1 and (x=2, y=0) n=1 -> grads 1 and 4
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    batches = [(torch.tensor([[1.0]]), torch.tensor([[0.0]])), (torch.tensor([[2.0]]), torch.tensor([[0.0]]))]
    loss = lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).sum()    # noqa: E731
    (f,) = fisher_diagonal(lin, [lin.weight], batches, loss)
    assert float(f) == pytest.approx((1 * 1 + 1 * 16) / 2)


def test_fila_initialize_on_model_keeps_outputs_and_rejects_bad_fisher():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    before = model(x).detach()
    apply(model, "loku", rank=2)
    loss = lambda m, b: F.mse_loss(m(b[0]), b[1])              # noqa: E731
    fila_initialize(model, [(x[:8], torch.zeros(8, 3))], [(x[8:], before[8:])], loss)
    assert torch.allclose(model(x), before, atol=1e-5)
    layer = adapters(model)["0"]
    with pytest.raises(ValueError, match="fisher_forget"):
        fila_init(layer, -torch.ones(8, 4), torch.ones(8, 4))
    with pytest.raises(ValueError, match="fisher_retain"):
        fila_init(layer, torch.ones(8, 4), torch.ones(3, 3))


def _quadratic():
    # L(θ) = 0.5 * θᵀ diag(1, 4) θ at θ = (1, 1): g = (1, 4)
    theta = nn.Parameter(torch.tensor([1.0, 1.0]))
    h = torch.tensor([1.0, 4.0])
    return theta, h, lambda: 0.5 * (h * theta ** 2).sum()


def test_glad_gradient_interpolates_plain_and_sam_by_hand():
    theta, h, closure = _quadratic()
    g = torch.tensor([1.0, 4.0])
    eps = 0.1 * g / g.norm()
    g_sam = h * (theta.detach() + eps)                           # ∇L(θ + ε)
    for lam, expected in ((0.0, g), (1.0, g_sam), (0.5, 0.5 * (g + g_sam))):
        GLAD([theta], rho=0.1, lam=lam).regularized_gradient(closure)
        assert torch.allclose(theta.grad, expected, atol=1e-6)
    assert torch.equal(theta.detach(), torch.tensor([1.0, 1.0]))   # parameters restored


def test_glad_approximates_gradient_norm_penalty():
    theta, h, closure = _quadratic()
    rho, lam = 1e-3, 0.5
    GLAD([theta], rho=rho, lam=lam).regularized_gradient(closure)
    # ∇(L + λρ‖∇L‖) with ∇L = Hθ
    t = theta.detach().clone().requires_grad_(True)
    reg = 0.5 * (h * t ** 2).sum() + lam * rho * torch.linalg.norm(h * t)
    (expected,) = torch.autograd.grad(reg, t)
    assert torch.allclose(theta.grad, expected, atol=1e-5)


def test_glad_trains_lora_on_the_shifted_task():
    from lab.experiments.peft import PeftConfig, peft_finetune

    frozen = peft_finetune(PeftConfig(method="frozen", steps=60))
    glad = peft_finetune(PeftConfig(method="glad", steps=60))
    assert glad["test_loss"][-1] < 0.3 * frozen["test_loss"][-1]


def test_glad_bad_inputs():
    theta = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="rho"):
        GLAD([theta], rho=0.0)
    with pytest.raises(ValueError, match="lam"):
        GLAD([theta], lam=-0.1)
    with pytest.raises(ValueError, match="params"):
        GLAD([nn.Parameter(torch.zeros(2), requires_grad=False)])


def test_loku_unlearns_the_forget_class_and_keeps_the_rest():
    # a 3-class linear-softmax classifier on separable blobs; forget class 0 with FILA-LoRA + IHL + retain NLL
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    labels = torch.arange(3).repeat_interleave(60)
    x = centers[labels] + 0.7 * torch.randn(180, 2, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    forget, retain = labels == 0, labels != 0
    acc = lambda m: (m(x).argmax(-1) == labels).float()        # noqa: E731
    assert acc(model)[forget].mean() > 0.95
    apply(model, "loku", rank=2)
    nll = lambda m, b: F.cross_entropy(m(b[0]), b[1])          # noqa: E731
    fila_initialize(model, [(x[forget], labels[forget])], [(x[retain], labels[retain])], nll)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        ihl, _ = inverted_hinge(model(x[forget])[:, None, :], labels[forget][:, None])
        (ihl + F.cross_entropy(model(x[retain]), labels[retain])).backward()
        opt.step()
    with torch.no_grad():
        a = acc(model)
    assert a[forget].mean() < 0.2 and a[retain].mean() > 0.9


def test_fila_rejects_a_rank_above_min_d_k():
    layer = FILALinear(nn.Linear(3, 2), rank=3)
    with pytest.raises(ValueError, match="rank"):
        fila_init(layer, torch.ones(2, 3), torch.ones(2, 3))


def test_glad_ascent_uses_the_joint_norm_and_restores_parameters_on_error():
    a, b = nn.Parameter(torch.tensor([1.0])), nn.Parameter(torch.tensor([1.0]))
    closure = lambda: 0.5 * a.sum() ** 2 + 1.5 * b.sum() ** 2         # noqa: E731  g = (1, 3)
    GLAD([a, b], rho=0.5, lam=1.0).regularized_gradient(closure)      # λ = 1: ĝ = g_sam
    eps = 0.5 * torch.tensor([1.0, 3.0]) / 10 ** 0.5                   # ρ g / ‖(1, 3)‖
    torch.testing.assert_close(torch.cat([a.grad, b.grad]), torch.tensor([1.0, 3.0]) * (1 + eps))
    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("second pass")
        return closure()

    with pytest.raises(RuntimeError):
        GLAD([a, b]).regularized_gradient(failing)
    assert a.item() == pytest.approx(1.0, abs=1e-6) and b.item() == pytest.approx(1.0, abs=1e-6)
