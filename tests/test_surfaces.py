"""toy_envs.surfaces: values at the minimizers, gradients vanish there, grids, errors."""
import pytest
import torch

from toy_envs.surfaces import SURFACES, get_surface


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_minimizers_have_the_minimum_value_and_zero_gradient(name):
    s = SURFACES[name]
    for point in s.minimizers:
        xy = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        value = s(xy)
        value.backward()
        assert value.item() == pytest.approx(s.minimum, abs=1e-5)
        assert xy.grad.norm().item() < 1e-3
    # the start point is not a minimizer and lies inside the plotting range
    start = torch.tensor(s.start, dtype=torch.float64)
    assert s(start).item() > s.minimum
    assert s.x_range[0] <= s.start[0] <= s.x_range[1] and s.y_range[0] <= s.start[1] <= s.y_range[1]


def test_hand_computed_values():
    assert get_surface("rosenbrock")(torch.tensor([0.0, 0.0])).item() == 1.0
    assert get_surface("himmelblau")(torch.tensor([0.0, 0.0])).item() == 170.0
    assert get_surface("quadratic")(torch.tensor([1.0, 1.0])).item() == 25.5
    assert get_surface("saddle")(torch.tensor([1.0, 2.0])).item() == 1.0 - 4.0 + 4.0
    assert get_surface("rastrigin")(torch.tensor([0.5, 0.0])).item() == pytest.approx(20.25 + 10 - 10 + 0)
    # Beale at (0, 0): 1.5^2 + 2.25^2 + 2.625^2
    assert get_surface("beale")(torch.tensor([0.0, 0.0])).item() == pytest.approx(14.203125)


def test_grid_and_batch_shapes():
    xs, ys, z = get_surface("beale").grid(7)
    assert xs.shape == (7,) and ys.shape == (7,) and z.shape == (7, 7)
    s = get_surface("rosenbrock")
    assert z[0, 0] == get_surface("beale")(torch.stack([xs[0], ys[0]]))
    assert s(torch.zeros(4, 3, 2)).shape == (4, 3)
    assert s.distance_to_min(torch.tensor([1.0, 2.0])).item() == pytest.approx(1.0)


def test_errors_name_the_argument():
    with pytest.raises(KeyError, match="valid names: rosenbrock"):
        get_surface("rosenbrok")
    with pytest.raises(ValueError, match="xy must have shape"):
        get_surface("beale")(torch.zeros(3))
    with pytest.raises(TypeError, match="xy"):
        get_surface("beale")([0.0, 0.0])
