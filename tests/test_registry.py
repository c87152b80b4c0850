"""lab.registry: register, available, make, info, parse_spec, and the errors."""
import pytest
import torch

from lab import registry
from lab.registry import KINDS, available, info, make, parse_spec, register


def test_kinds_are_those_of_the_design():
    for kind in ["optimizer", "distributed", "layer", "solver", "peft", "merge", "advantage",
                 "policy_loss", "preference_loss", "sampler", "reward", "aggregator",
                 "participation", "balancer", "flow_loss", "continual", "experiment"]:
        assert kind in KINDS
    assert available() == list(KINDS)


def test_torch_baselines_are_registered_with_papers():
    names = available("optimizer")
    assert {"sgd", "adam", "adamw"} <= set(names)
    assert names == sorted(names)
    entry = info("optimizer", "adamw")
    assert entry.obj is torch.optim.AdamW
    assert entry.paper == "Decoupled Weight Decay Regularization" and entry.arxiv == "1711.05101"
    assert entry.module == "lab.optim.baselines"
    assert info("optimizer", "adam").arxiv == "1412.6980"


def test_make_builds_with_spec_kwargs_and_explicit_kwargs_win():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make("optimizer", "sgd(momentum=0.9, nesterov=True)", [p], lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.1, 0.9, True)
    opt = make("optimizer", "sgd(lr=0.5)", [p], lr=0.2)
    assert opt.param_groups[0]["lr"] == 0.2


def test_unknown_kind_and_name_list_the_valid_ones():
    with pytest.raises(KeyError, match="valid kinds: optimizer"):
        available("optimiser")
    with pytest.raises(KeyError, match=r"valid names: .*adam.*adamw"):
        info("optimizer", "adma")
    with pytest.raises(KeyError, match="valid names"):
        make("optimizer", "nope", [])


def test_register_decorates_functions_and_classes_and_rejects_bad_input():
    @register("merge", "test_only_merge", paper="A Test Paper", arxiv="0000.00000")
    def merge_fn(x):
        """Average things."""
        return x

    try:
        entry = info("merge", "test_only_merge")
        assert entry.obj is merge_fn and entry.summary == "Average things."
        assert entry.module == __name__
        assert make("merge", "test_only_merge", 3) == 3
        with pytest.raises(ValueError, match="already registered"):
            register("merge", "test_only_merge", paper="Other")(lambda x: x)
    finally:
        registry._REGISTRY["merge"].pop("test_only_merge")
    with pytest.raises(ValueError, match="paper"):
        register("merge", "x", paper="")
    with pytest.raises(ValueError, match="lower_snake_case"):
        register("merge", "Bad Name", paper="P")
    with pytest.raises(KeyError, match="valid kinds"):
        register("nonsense", "x", paper="P")


@pytest.mark.parametrize("spec,expected", [
    ("adam", ("adam", {})),
    ("  sgd  ", ("sgd", {})),
    ("sgd(momentum=0.9)", ("sgd", {"momentum": 0.9})),
    ("adam(betas=(0.9, 0.99), amsgrad=True, eps=1e-6)",
     ("adam", {"betas": (0.9, 0.99), "amsgrad": True, "eps": 1e-6})),
    ("x(mode='blockwise', n=None)", ("x", {"mode": "blockwise", "n": None})),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec,error", [
    ("sgd(__import__('os'))", ValueError),
    ("sgd(lr=foo)", ValueError),
    ("sgd(**{'lr': 1})", ValueError),
    ("sgd(lr=1", ValueError),
    ("a.b(lr=1)", ValueError),
    (3, TypeError),
])
def test_parse_spec_rejects_non_literals(spec, error):
    with pytest.raises(error):
        parse_spec(spec)


def test_every_entry_has_a_paper_and_lives_in_lab():
    for entry in registry.entries():
        assert entry.paper.strip(), entry
        assert entry.module.startswith(("lab.", "toy_envs")), entry
