"""Float64 differential tests against the peer packages (the ``peers`` extra).

Every lab optimizer that a peer implements runs next to it on the same model, data and
hyperparameters for 12 steps; the parameters must agree to 1e-10 (norm-wise relative), or the
test names the deviation, shows it, and shows that removing exactly that difference restores the
agreement. Peers: ``adamp`` 0.3.0 (the AdamP authors'), ``adabelief-pytorch`` 0.2.1 (the
AdaBelief authors'), ``lion-pytorch``, ``torch-optimizer`` 0.3.0, ``pytorch-optimizer`` 4.x,
``galore-torch`` 1.0 (the GaLore authors').

No installed peer implements AGD, Lion-kappa's l2/half_l2/nuclear, BAdam, FRUGAL, GradNormLoRP,
ES or EGGROLL (their reference code is not packaged); their value tests live in the other files.

The models avoid parameters with an exactly-zero expected gradient (a conv bias before a
BatchNorm): there every Adam-type method divides round-off by round-off and takes full-size
steps whose sign is noise, so two correct implementations differ at the size of a step.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lab.registry import make

adamp_pkg = pytest.importorskip("adamp", reason="the peers extra is not installed")
adabelief_pytorch = pytest.importorskip("adabelief_pytorch", reason="the peers extra is not installed")
lion_pytorch = pytest.importorskip("lion_pytorch", reason="the peers extra is not installed")
torch_optimizer = pytest.importorskip("torch_optimizer", reason="the peers extra is not installed")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="the peers extra is not installed")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    galore_torch = pytest.importorskip("galore_torch", reason="the peers extra is not installed")

F64 = torch.float64
TOL = 1e-10


def conv_bn(seed=0):
    """Conv + BatchNorm + Linear: the conv weights are scale-invariant (AdamP/SGDP project them)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 5)).to(F64)


def mlp(seed=0):
    """Matrices with m > n and m < n, for the projected (low-rank) methods."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 10), nn.Tanh(),
                         nn.Linear(10, 5)).to(F64)


def batch(step, model):
    """Images and labels for the conv net; inputs and regression targets for the MLP."""
    g = torch.Generator().manual_seed(1000 + step)
    if isinstance(model[0], nn.Conv2d):
        return torch.randn(8, 3, 8, 8, generator=g, dtype=F64), torch.randint(0, 5, (8,), generator=g)
    return torch.randn(8, 12, generator=g, dtype=F64), torch.randn(8, 5, generator=g, dtype=F64)


def loss_fn(model, x, y):
    """Cross-entropy for the conv net. For the MLP a squared error: a cross-entropy gradient of
    the last layer has rank <= classes - 1 (each row of softmax - onehot sums to 0), and the SVD
    of a rank-deficient matrix picks its singular vectors' signs from round-off, so a 1e-17
    difference flips a GaLore projector (and the moments kept in the old basis)."""
    out = model(x)
    return nn.functional.cross_entropy(out, y) if y.dtype == torch.int64 else ((out - y) ** 2).mean()


def train(build, net=conv_bn, steps=12, style="plain"):
    """Parameters after ``steps`` steps. ``style``: how the optimizer wants its closure.

    plain: backward, then ``step()``; closure: ``step(closure)`` (it calls the closure itself);
    grad_then_closure: backward, then ``step(closure)`` (pytorch_optimizer's SAM).
    """
    model = net()
    opt = build(model)
    for step in range(steps):
        x, y = batch(step, model)

        def closure():
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            return loss

        if style == "closure":
            opt.step(closure)
        else:
            closure()
            opt.step(closure) if style == "grad_then_closure" else opt.step()
    return [p.detach().clone() for p in model.parameters()]


def distance(a, b):
    """Largest norm-wise relative difference over the parameters."""
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


def lab(name, net_params=None, **kwargs):
    return lambda model: make("optimizer", name, model.parameters(), **kwargs)


# ---- exact agreement --------------------------------------------------------------------------
EXACT = {
    "adamp-vs-adamp": (lab("adamp", lr=1e-2, weight_decay=0.1),
                       lambda m: adamp_pkg.AdamP(m.parameters(), lr=1e-2, weight_decay=0.1)),
    "adamp-nesterov-vs-adamp": (
        lab("adamp", lr=1e-2, weight_decay=0.1, nesterov=True),
        lambda m: adamp_pkg.AdamP(m.parameters(), lr=1e-2, weight_decay=0.1, nesterov=True)),
    "adamp-vs-torch_optimizer": (lab("adamp", lr=1e-2, weight_decay=0.1),
                                 lambda m: torch_optimizer.AdamP(m.parameters(), lr=1e-2, weight_decay=0.1)),
    "sgdp-package-mode-vs-adamp": (
        lab("sgdp", lr=0.05, momentum=0.9, weight_decay=1e-3, project_momentum=True),
        lambda m: adamp_pkg.SGDP(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgdp-package-mode-vs-torch_optimizer": (
        lab("sgdp", lr=0.05, momentum=0.9, weight_decay=1e-3, project_momentum=True),
        lambda m: torch_optimizer.SGDP(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgdp-paper-mode-vs-pytorch_optimizer": (  # it clones the buffer before projecting: the paper
        lab("sgdp", lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda m: pytorch_optimizer.SGDP(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3,
                                         weight_decouple=True)),
    "sgdp-nesterov-vs-adamp": (  # the package's d_p is a new tensor here: both modes agree
        lab("sgdp", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda m: adamp_pkg.SGDP(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adabelief-vs-adabelief_pytorch": (
        lab("adabelief", lr=1e-2, weight_decay=0.1),
        lambda m: adabelief_pytorch.AdaBelief(m.parameters(), lr=1e-2, weight_decay=0.1,
                                              print_change_log=False)),
    "adabelief-amsgrad-unrectified-vs-adabelief_pytorch": (
        lab("adabelief", lr=1e-2, weight_decay=0.1, rectify=False, amsgrad=True),
        lambda m: adabelief_pytorch.AdaBelief(m.parameters(), lr=1e-2, weight_decay=0.1, rectify=False,
                                              amsgrad=True, print_change_log=False)),
    "adabelief-l2-vs-adabelief_pytorch": (
        lab("adabelief", lr=1e-2, weight_decay=0.1, weight_decouple=False),
        lambda m: adabelief_pytorch.AdaBelief(m.parameters(), lr=1e-2, weight_decay=0.1,
                                              weight_decouple=False, print_change_log=False)),
    "adabelief-vs-pytorch_optimizer": (
        lab("adabelief", lr=1e-2, weight_decay=0.1, rectify=False),
        lambda m: pytorch_optimizer.AdaBelief(m.parameters(), lr=1e-2, weight_decay=0.1)),
    "adabelief-rectified-vs-pytorch_optimizer": (
        lab("adabelief", lr=1e-2, weight_decay=0.1),
        lambda m: pytorch_optimizer.AdaBelief(m.parameters(), lr=1e-2, weight_decay=0.1, rectify=True)),
    "adabelief-unrectified-vs-torch_optimizer": (  # its eps default is 1e-8: pass the authors' 1e-16
        lab("adabelief", lr=1e-2, weight_decay=0.1, rectify=False, weight_decouple=False),
        lambda m: torch_optimizer.AdaBelief(m.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-16)),
    "lion-vs-lion_pytorch": (lab("lion", lr=1e-3, weight_decay=0.1),
                             lambda m: lion_pytorch.Lion(m.parameters(), lr=1e-3, weight_decay=0.1)),
    "lion-vs-pytorch_optimizer": (lab("lion", lr=1e-3, weight_decay=0.1),
                                  lambda m: pytorch_optimizer.Lion(m.parameters(), lr=1e-3, weight_decay=0.1)),
    "lion_kappa-l1-vs-lion_pytorch": (
        lab("lion_kappa", lr=1e-3, weight_decay=0.1, kappa="l1"),
        lambda m: lion_pytorch.Lion(m.parameters(), lr=1e-3, weight_decay=0.1)),
    "diffgrad-vs-torch_optimizer": (lab("diffgrad", lr=1e-2, weight_decay=0.1),
                                    lambda m: torch_optimizer.DiffGrad(m.parameters(), lr=1e-2, weight_decay=0.1)),
    "signum-vs-pytorch_optimizer": (
        lab("signsgd", lr=1e-3, momentum=0.9, weight_decay=0.1),
        lambda m: pytorch_optimizer.SignSGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=0.1)),
    "signsgd-vs-pytorch_optimizer": (
        lab("signsgd", lr=1e-3, weight_decay=0.1),
        lambda m: pytorch_optimizer.SignSGD(m.parameters(), lr=1e-3, momentum=0.0, weight_decay=0.1)),
}


@pytest.mark.parametrize("case", list(EXACT))
def test_agrees_with_peer(case):
    ours, theirs = EXACT[case]
    assert distance(train(ours), train(theirs)) <= TOL


def test_sgdp_paper_and_package_modes_differ_where_the_package_projects_its_buffer():
    # The authors' package projects the momentum buffer in place (d_p aliases buf, nesterov off).
    # The paper's Algorithm projects only the update: both peers exist, and they disagree.
    paper = train(lab("sgdp", lr=0.05, momentum=0.9, weight_decay=1e-3))
    package = train(lambda m: adamp_pkg.SGDP(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3))
    assert distance(paper, package) > 1e-2

    # the package with a copy of the buffer (the one difference removed) is the paper's SGDP
    def cloning(m):
        opt = adamp_pkg.SGDP(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        projection = opt._projection
        opt._projection = lambda p, grad, perturb, *args: projection(p, grad, perturb.clone(), *args)
        return opt

    assert distance(paper, train(cloning)) <= TOL


# ---- documented deviations --------------------------------------------------------------------
def test_pytorch_optimizer_adamp_puts_eps_outside_the_bias_correction():
    # pytorch_optimizer: m sqrt(bc2)/(sqrt(v) + eps); the authors (and the lab):
    # m/(sqrt(v)/sqrt(bc2) + eps) = m sqrt(bc2)/(sqrt(v) + eps sqrt(bc2)). Different for eps > 0 ...
    def pair(eps):
        return (train(lab("adamp", lr=1e-2, weight_decay=0.1, eps=eps)),
                train(lambda m: pytorch_optimizer.AdamP(m.parameters(), lr=1e-2, weight_decay=0.1, eps=eps)))

    assert distance(*pair(1e-8)) > 1e-7
    assert distance(*pair(1e-30)) <= TOL  # ... and the same once eps no longer matters


def test_pytorch_optimizer_diffgrad_adds_1e_15_under_the_square_root(monkeypatch):
    # pytorch_optimizer: sqrt(v + 1e-15) + eps; the authors' diffGrad (and the lab): sqrt(v) + eps
    ours = train(lab("diffgrad", lr=1e-2, weight_decay=0.1))

    def peer():
        return train(lambda m: pytorch_optimizer.DiffGrad(m.parameters(), lr=1e-2, weight_decay=0.1,
                                                          weight_decouple=False, foreach=False))

    assert distance(ours, peer()) > 1e-9
    original = pytorch_optimizer.DiffGrad.apply_ams_bound
    monkeypatch.setattr(pytorch_optimizer.DiffGrad, "apply_ams_bound",
                        staticmethod(lambda *a, **k: original(*a, **{**k, "exp_avg_sq_eps": 0.0})))
    assert distance(ours, peer()) <= TOL


def test_torch_optimizer_adabelief_rectification_differs():
    # torch_optimizer 0.3.0 rectifies once rho_t > 4 and never takes SGD steps before; the authors'
    # package (and the lab) wait for rho_t >= 5 and take SGD-momentum steps until then
    ours = train(lab("adabelief", lr=1e-2, rectify=True, weight_decouple=False))
    theirs = train(lambda m: torch_optimizer.AdaBelief(m.parameters(), lr=1e-2, eps=1e-16, rectify=True))
    assert distance(ours, theirs) > 1e-3


def _svd_in_weight_dtype(rank_of):
    """A GaLore projector method identical to the peer's but for its SVD, run in the weight's
    dtype: both peers cast the gradient to float32 for the SVD, also for float64 weights."""
    def get_orthogonal_matrix(self, weights, *args, **kwargs):
        kind = kwargs.get("projection_type", kwargs.get("type", args[-1] if args else None))
        u, _, vh = torch.linalg.svd(weights, full_matrices=False)
        r = rank_of(self)
        return vh[:r, :] if kind == "right" else u[:, :r]
    return get_orthogonal_matrix


def _galore_groups(model, **kwargs):
    matrices = [p for p in model.parameters() if p.dim() == 2]
    vectors = [p for p in model.parameters() if p.dim() != 2]
    return [{"params": vectors}, {"params": matrices, **kwargs}]


GALORE_PEERS = {
    "galore-vs-galore_torch": (
        lab("galore", lr=1e-2, rank=4, update_proj_gap=5, weight_decay=0.1),
        lambda m: galore_torch.GaLoreAdamW(_galore_groups(m, rank=4, update_proj_gap=5, scale=1.0,
                                                          proj_type="std"), lr=1e-2, weight_decay=0.1),
        "galore_torch.galore_projector.GaLoreProjector", lambda self: self.rank),
    # pytorch_optimizer refreshes at group steps t = 1 and t % T == 0 (galore-torch and the lab
    # at t = 1, T + 1, 2T + 1, ...): with T = 1 the two schedules coincide
    "galore-vs-pytorch_optimizer": (
        lab("galore", lr=1e-2, rank=4, update_proj_gap=1),
        lambda m: pytorch_optimizer.GaLore(_galore_groups(m, rank=4, update_proj_gap=1, scale=1.0,
                                                          projection_type="std"), lr=1e-2),
        "pytorch_optimizer.optimizer.utils.galore.GaLoreProjector", lambda self: self.rank),
    "fira-vs-pytorch_optimizer": (
        lab("fira", lr=1e-2, rank=4, update_proj_gap=1),
        lambda m: pytorch_optimizer.Fira(_galore_groups(m, rank=4, update_proj_gap=1, scale=1.0,
                                                        projection_type="std"), lr=1e-2),
        "pytorch_optimizer.optimizer.utils.galore.GaLoreProjector", lambda self: self.rank),
}


def test_pytorch_optimizer_galore_refreshes_one_step_earlier():
    # T = 5: the lab (as galore-torch) refreshes at steps 1, 6, 11; pytorch_optimizer at 1, 5, 10
    ours = train(lab("galore", lr=1e-2, rank=4, update_proj_gap=5), net=mlp)
    theirs = train(lambda m: pytorch_optimizer.GaLore(
        _galore_groups(m, rank=4, update_proj_gap=5, scale=1.0, projection_type="std"), lr=1e-2), net=mlp)
    assert distance(ours, theirs) > 1e-3


@pytest.mark.parametrize("case", list(GALORE_PEERS))
def test_low_rank_peers_agree_once_their_svd_runs_in_float64(case, monkeypatch):
    ours, theirs, projector, rank_of = GALORE_PEERS[case]
    mine = train(ours, net=mlp)
    assert distance(mine, train(theirs, net=mlp)) > 100 * TOL  # float32 SVD: projectors differ ~1e-7
    monkeypatch.setattr(f"{projector}.get_orthogonal_matrix", _svd_in_weight_dtype(rank_of))
    assert distance(mine, train(theirs, net=mlp)) <= TOL


def _norm_in_dtype(param_groups, device=None, *, weight_adaptive=False):
    """pytorch_optimizer's global squared gradient norm, in the gradients' dtype: the peer's
    version (utils.gradient.get_global_gradient_norm) converts the norms to float32."""
    grads = [p.grad * p.abs() if weight_adaptive and g.get("adaptive") else p.grad
             for g in param_groups for p in g["params"] if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).square().sum().reshape(1)


SAM_PEERS = {
    "sam": (lab("sam", base_optimizer=torch.optim.SGD, lr=0.05, rho=0.05, base_kwargs={"momentum": 0.9}),
            lambda m: pytorch_optimizer.SAM(m.parameters(), base_optimizer=torch.optim.SGD, lr=0.05,
                                            momentum=0.9, rho=0.05), "grad_then_closure"),
    "asam": (lab("sam", base_optimizer=torch.optim.SGD, lr=0.05, rho=0.5, adaptive=True,
                 base_kwargs={"momentum": 0.9}),
             lambda m: pytorch_optimizer.SAM(m.parameters(), base_optimizer=torch.optim.SGD, lr=0.05,
                                             momentum=0.9, rho=0.5, adaptive=True), "grad_then_closure"),
    "wsam": (lab("wsam", base_optimizer=torch.optim.SGD, lr=0.05, rho=0.05, gamma=0.9,
                 base_kwargs={"momentum": 0.9}),
             lambda m: pytorch_optimizer.WSAM(m, m.parameters(), base_optimizer=torch.optim.SGD, lr=0.05,
                                              momentum=0.9, rho=0.05, gamma=0.9), "closure"),
}


@pytest.mark.parametrize("case", list(SAM_PEERS))
def test_sam_family_agrees_once_the_peer_norm_is_float64(case, monkeypatch):
    # pytorch_optimizer computes the perturbation's global norm in float32 (a ~1e-8 relative error
    # in e, ~1e-9 in the weights after 12 steps); with that norm in float64 they agree
    ours, theirs, style = SAM_PEERS[case]
    mine = train(ours, net=mlp, style="closure")
    assert distance(mine, train(theirs, net=mlp, style=style)) > TOL
    monkeypatch.setattr("pytorch_optimizer.optimizer.sam.get_global_gradient_norm", _norm_in_dtype)
    assert distance(mine, train(theirs, net=mlp, style=style)) <= TOL
