"""The sync-free L-BFGS: torch.optim.LBFGS's iterates, without host reads in the loop."""

from __future__ import annotations

import pytest
import torch

from nstd.engine.optim import SyncFreeLBFGS


def problem(n: int = 24, seed: int = 0):
    """A smooth convex problem with a quartic term (curvature changes along the path)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen)
    a = a @ a.T / n + 0.1 * torch.eye(n)
    b = torch.randn(n, generator=gen)
    return lambda x: 0.5 * x @ a @ x - b @ x + 0.1 * (x**4).sum()


def run(make, f, steps: int, n: int = 24,
        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[float]]:
    x = torch.zeros(n, dtype=dtype, requires_grad=True)
    optimizer = make(x)
    losses = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    for _ in range(steps):
        losses.append(float(optimizer.step(closure).detach()))
    return x.detach(), losses


@pytest.mark.parametrize("history", [3, 10])
def test_same_iterates_as_torch_lbfgs(history: int) -> None:
    f = problem()
    ours, our_losses = run(lambda x: SyncFreeLBFGS(x, history=history), f, 40)
    theirs, their_losses = run(lambda x: torch.optim.LBFGS(
        [x], lr=1.0, max_iter=1, history_size=history), f, 40)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert our_losses == pytest.approx(their_losses, rel=1e-5, abs=1e-6)
    assert our_losses[-1] < our_losses[0]


def test_same_result_as_torch_on_a_small_stylization() -> None:
    """The engine's problem itself: a tiny image, a random conv net, Gram + content terms.

    In float64: without a line search, L-BFGS amplifies float32 rounding differences (CPU
    convolutions are not bitwise reproducible between runs) over a few dozen steps.
    """
    gen = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.3)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
    content = torch.rand(1, 3, 12, 12, generator=gen, dtype=torch.float64)
    style = torch.rand(1, 3, 12, 12, generator=gen, dtype=torch.float64)

    def gram(x: torch.Tensor) -> torch.Tensor:
        feats = torch.relu(conv(x)).flatten(2)
        return feats @ feats.transpose(1, 2) / feats.shape[-1]

    with torch.no_grad():
        target = gram(style)

    def f(x: torch.Tensor) -> torch.Tensor:
        image = x.view(1, 3, 12, 12)
        return (image - content).pow(2).mean() + 10 * (gram(image) - target).pow(2).mean()

    n = 3 * 12 * 12
    ours, our_losses = run(lambda x: SyncFreeLBFGS(x, history=5), f, 25, n, torch.float64)
    theirs, their_losses = run(lambda x: torch.optim.LBFGS(
        [x], lr=1.0, max_iter=1, history_size=5), f, 25, n, torch.float64)
    assert our_losses == pytest.approx(their_losses, rel=1e-9)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9)
    assert our_losses[-1] < 0.95 * our_losses[0]


def test_rejected_curvature_pairs_are_inert() -> None:
    # A linear function: y = 0 for every step, so no pair is ever accepted (rho stays 0) and
    # the method stays plain gradient descent, never dividing by zero.
    x = torch.ones(4, requires_grad=True)
    optimizer = SyncFreeLBFGS(x, history=2)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = x.sum()
        loss.backward()
        return loss

    optimizer.step(closure)  # torch's first step: t = min(1, 1/|g|_1) = 1/4, x -= t * g
    assert torch.allclose(x.detach(), torch.full((4,), 0.75))
    for _ in range(3):  # later steps: H = 1 (no accepted pair), t = 1: x -= g
        optimizer.step(closure)
    assert torch.allclose(x.detach(), torch.full((4,), -2.25))
    assert float(optimizer._rho.abs().sum()) == 0.0
    with pytest.raises(ValueError):
        SyncFreeLBFGS(torch.zeros(2, requires_grad=True), history=0)


def test_fixed_memory_history_ring() -> None:
    x = torch.zeros(24, requires_grad=True)
    optimizer = SyncFreeLBFGS(x, history=4)
    f = problem()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    buffers = (optimizer._s.data_ptr(), optimizer._y.data_ptr())
    for _ in range(12):
        optimizer.step(closure)
    assert optimizer.pairs == 11 and (optimizer._s.data_ptr(), optimizer._y.data_ptr()) == buffers
    assert float(optimizer._h_diag) > 0


def test_a_non_finite_evaluation_restarts_from_the_last_finite_point() -> None:
    f = problem()
    x = torch.zeros(24, requires_grad=True)
    optimizer = SyncFreeLBFGS(x, history=5)
    calls = {"n": 0}
    seen: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        calls["n"] += 1
        seen.append(x.detach().clone())
        loss = f(x)
        if calls["n"] == 6:  # an overflow, as a wild step into a huge loss would give
            loss = loss * float("inf")
        loss.backward()
        return loss

    for _ in range(40):
        optimizer.step(closure)
    assert torch.equal(seen[6], seen[4])  # back to the last finite point, nothing learnt
    assert torch.isfinite(x).all()
    reference, _ = run(lambda x: torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=5),
                       f, 40)
    assert float(f(x.detach())) == pytest.approx(float(f(reference)), rel=1e-3)
