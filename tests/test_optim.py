"""BoxLBFGS: one evaluation per step, scale-free decisions, iterates inside the box."""

from __future__ import annotations

import pytest
import torch

from nstd.engine.optim import BoxLBFGS


def quartic(n: int = 24, seed: int = 0, centre: float = 0.5):
    """A smooth convex problem with a quartic term whose minimiser lies inside [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    target = centre + 0.3 * torch.rand(n, generator=gen, dtype=torch.float64) - 0.15
    return lambda x: 0.5 * (x - target) @ a @ (x - target) + ((x - target) ** 4).sum()


def run(f, steps: int, x0: torch.Tensor, **options) -> tuple[torch.Tensor, list[float]]:
    """Step BoxLBFGS `steps` times; returns (final trial point, loss of each evaluation)."""
    x = x0.clone().requires_grad_(True)
    optimizer = BoxLBFGS(x, **options)
    losses, points = [], []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        points.append(x.detach().clone())
        loss = f(x)
        loss.backward()
        return loss

    for _ in range(steps):
        losses.append(float(optimizer.step(closure).detach()))
    run.points = points  # type: ignore[attr-defined]
    return x.detach(), losses


def test_converges_on_a_smooth_problem_one_evaluation_per_step() -> None:
    f = quartic()
    calls = 0

    def counted(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return f(x)

    _, losses = run(counted, 40, torch.zeros(24, dtype=torch.float64))
    assert calls == 40
    assert min(losses) < 1e-8 * losses[0]


@pytest.mark.parametrize("k", [-3, 3])
def test_decisions_do_not_depend_on_the_loss_scale(k: int) -> None:
    """Every decision is relative, so scaling the loss by 10^k gives the same iterates (up to
    float64 rounding): the property that fixed-step L-BFGS lacked."""
    f = quartic()
    x0 = torch.zeros(24, dtype=torch.float64)
    _, plain = run(f, 30, x0)
    _, scaled = run(lambda x: 10.0 ** k * f(x), 30, x0)
    assert [s / 10.0 ** k for s in scaled] == pytest.approx(plain, rel=1e-6, abs=1e-18)


def test_every_evaluated_point_lies_in_the_box() -> None:
    """A minimiser outside [0, 1] (centre 1.4): evaluated points stay inside, and the result
    is the constrained minimiser (pixels pinned at 1 where the target is above 1)."""
    f = quartic(centre=1.4)
    run(f, 60, torch.full((24,), 0.5, dtype=torch.float64))
    points = torch.stack(run.points)  # type: ignore[attr-defined]
    assert points.min() >= 0.0 and points.max() <= 1.0
    best = points[-1]
    assert (best > 0.999).sum() > 12  # most targets lie above 1


def test_a_start_outside_the_box_is_clamped_into_it() -> None:
    x = torch.full((4,), 3.0, requires_grad=True)
    BoxLBFGS(x)
    assert torch.equal(x.detach(), torch.ones(4))


def test_an_overflowing_trial_is_rejected_and_the_search_backtracks() -> None:
    """A loss that is inf past x = 0.7: the trial is rejected, the next is shorter, and the
    loss ends below its start (no NaN spreads into the iterate)."""
    def f(x: torch.Tensor) -> torch.Tensor:
        value = ((x - 0.65) ** 2).sum()
        return torch.where(x.max() > 0.7, torch.full_like(value, float("inf")), value)

    x, losses = run(f, 25, torch.zeros(8, dtype=torch.float64), first_step=1.0)
    assert any(loss == float("inf") for loss in losses)
    assert torch.isfinite(x).all()
    assert min(losses) < 1e-3 * losses[0]


def test_history_must_be_positive_and_x_contiguous() -> None:
    with pytest.raises(ValueError, match="history"):
        BoxLBFGS(torch.zeros(2, requires_grad=True), history=0)
    with pytest.raises(ValueError, match="contiguous"):
        BoxLBFGS(torch.zeros(3, 4).t().requires_grad_(True))


def test_memory_is_fixed_from_the_start() -> None:
    """The ring buffers are allocated once: pushing more pairs than `history` reuses them."""
    x = torch.zeros(16, dtype=torch.float64, requires_grad=True)
    optimizer = BoxLBFGS(x, history=3)
    buffers = (optimizer._s.data_ptr(), optimizer._y.data_ptr())
    f = quartic(16)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    for _ in range(10):
        optimizer.step(closure)
    assert optimizer.pairs == 9
    assert (optimizer._s.data_ptr(), optimizer._y.data_ptr()) == buffers
