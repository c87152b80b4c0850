"""Optimizer-state bytes measured from ``optimizer.state`` against each method's memory formula."""
import pytest
import torch
from torch import nn

from lab.optim.badam import BAdam
from lab.optim.fira import Fira
from lab.optim.frugal import FRUGAL
from lab.optim.galore import GaLore
from lab.optim.gradnorm_lorp import GradNormLoRP
from lab.optim.memory import bytes_per_param, param_count, state_bytes, state_bytes_by_key

F32, I64 = 4, 8  # bytes per float32 / int64 number
STEP = 4  # every method keeps a float32 scalar step counter per tensor with state


def _stepped(opt, params, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    return opt


def test_state_bytes_counts_nested_tensors_and_ignores_python_numbers():
    class Fake:
        state = {"a": {"m": torch.zeros(3, 2), "count": 7, "proj": {"cols": torch.zeros(4, dtype=torch.int64)}},
                 "b": {"list": [torch.zeros(5, dtype=torch.float64)]}}
        param_groups = [{"params": [torch.zeros(10), torch.zeros(2, 3)]}]
    assert state_bytes(Fake) == 6 * F32 + 4 * I64 + 5 * 8
    assert state_bytes_by_key(Fake) == {"m": 24, "count": 0, "proj": 32, "list": 40}
    assert param_count(Fake) == 16


def test_adamw_reference_is_eight_bytes_per_param():
    w = nn.Parameter(torch.zeros(64, 32))
    opt = _stepped(torch.optim.AdamW([w]), [w])
    assert state_bytes(opt) == 2 * 64 * 32 * F32 + STEP
    assert bytes_per_param(opt) == pytest.approx(8.0, abs=0.01)


@pytest.mark.parametrize("m, n", [(48, 32), (32, 48)])
def test_galore_memory_is_2_max_r_plus_min_r(m, n):
    r = 8
    w = nn.Parameter(torch.zeros(m, n))
    opt = _stepped(GaLore([w], rank=r), [w])
    assert state_bytes(opt) == (2 * max(m, n) * r + min(m, n) * r) * F32 + STEP


def test_galore_full_rank_path_for_a_bias_is_adam_sized():
    w, b = nn.Parameter(torch.zeros(48, 32)), nn.Parameter(torch.zeros(48))
    opt = _stepped(GaLore([w, b], rank=4), [w, b])
    assert state_bytes(opt) == (2 * 48 * 4 + 4 * 32) * F32 + STEP + 2 * 48 * F32 + STEP


def test_fira_memory_is_galore_plus_one_scalar():
    w = nn.Parameter(torch.zeros(48, 32))
    opt = _stepped(Fira([w], rank=8), [w])
    assert state_bytes(opt) == (2 * 48 * 8 + 8 * 32) * F32 + STEP + F32


def test_gradnorm_lorp_memory_adds_two_numbers_per_row():
    w = nn.Parameter(torch.zeros(48, 32))
    with torch.no_grad():
        w.add_(1.0)
    opt = _stepped(GradNormLoRP([w], rank=8), [w])
    assert state_bytes(opt) == (2 * 48 * 8 + 8 * 32 + 2 * 48) * F32 + STEP


@pytest.mark.parametrize("projection, expected", [
    ("svd", (2 * 48 * 8 + 8 * 32) * F32 + STEP),  # r = round(0.25 * 32) = 8
    ("random", (2 * 48 * 8 + 8 * 32) * F32 + STEP),
    ("coordinates", 2 * 48 * 8 * F32 + 8 * I64 + STEP),
])
def test_frugal_projected_memory(projection, expected):
    w = nn.Parameter(torch.zeros(48, 32))
    opt = _stepped(FRUGAL([w], density=0.25, projection=projection), [w])
    assert state_bytes(opt) == expected


def test_frugal_blockwise_memory_is_the_active_tensors_only():
    ws = [nn.Parameter(torch.zeros(16, 8 * (i + 1))) for i in range(4)]
    opt = _stepped(FRUGAL(ws, density=0.5, projection="blockwise", block_order="ascending"), ws)
    assert opt.schedule["active"] == [0, 1]
    assert state_bytes(opt) == 2 * (16 * 8 + 16 * 16) * F32 + 2 * STEP


def test_badam_memory_is_the_active_block_only():
    blocks = [{"params": [nn.Parameter(torch.zeros(16, 8)), nn.Parameter(torch.zeros(16))]},
              {"params": [nn.Parameter(torch.zeros(4, 16)), nn.Parameter(torch.zeros(4))]}]
    params = [p for b in blocks for p in b["params"]]
    opt = BAdam(blocks, freeze_inactive=False)  # last block first (descending)
    _stepped(opt, params)
    assert state_bytes(opt) == 2 * (4 * 16 + 4) * F32 + 2 * STEP


def test_low_rank_state_shrinks_with_rank_relative_to_adamw():
    w = nn.Parameter(torch.zeros(128, 128))
    adamw = bytes_per_param(_stepped(torch.optim.AdamW([w]), [w]))
    ratios = [bytes_per_param(_stepped(GaLore([w], rank=r), [w])) / adamw for r in (8, 32, 64)]
    assert ratios == sorted(ratios) and ratios[-1] < 1.0
    assert ratios[0] == pytest.approx(3 * 8 / (2 * 128), rel=0.01)  # (2 m r + n r) / (2 m n)
