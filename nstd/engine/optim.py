"""L-BFGS for one image tensor, without host synchronisation inside the iteration.

`torch.optim.LBFGS` (max_iter=1, no line search, as the engine uses it) reads values back to
the host several times per step: `float(loss)`, the gradient-norm and curvature tests
(`if ys > 1e-10`), and `q.add_(y, alpha=al[i])` with a tensor `alpha`, which is one sync per
history pair and loop. On a GPU each sync drains the launch queue, so at video frame sizes the
optimizer, not the network, sets the pace. `SyncFreeLBFGS` is the same algorithm with every
data-dependent decision made by tensor arithmetic instead of Python branches:

- a pair failing the curvature test (y.s <= 1e-10) is still stored, with rho = 0, which makes
  it a no-op in the two-loop recursion (alpha = 0, beta = 0), and the initial Hessian scale
  keeps its previous value (`torch.where`);
- the first step length min(1, 1/|g|_1) * lr stays a device tensor;
- a step along a non-descent direction (g.d >= -tolerance_change) is multiplied by 0.

History lives in preallocated ring buffers (history, n), so memory is fixed from the first
step and nothing is allocated per iteration besides temporaries. With no pair rejected it
gives torch's iterates up to rounding (tests check this). The one behavioural difference: a
rejected pair still takes a ring slot, so it pushes out the oldest pair one step earlier than
torch would; rejections are rare (the loss is locally convex along most steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CURVATURE_EPS = 1e-10  # torch.optim.LBFGS's threshold on y.s


class SyncFreeLBFGS:
    """Fixed-step L-BFGS on one tensor `x`, one function evaluation per `step`.

    Args:
        x: the leaf tensor being optimized (requires_grad), any shape, float32.
        history: pairs kept (memory: 2 * history * x.numel() floats on x's device).
        lr: step length multiplier, as in torch.optim.LBFGS (1.0 = plain L-BFGS step).
        tolerance_change: steps along directions with g.d > -tolerance_change are skipped.

    `step(closure)`: closure() zeroes nothing itself; it must compute the loss, call
    backward() (so x.grad holds the gradient) and return the loss. Returns the loss tensor
    (on x's device, not read back).
    """

    def __init__(self, x: Tensor, history: int, lr: float = 1.0,
                 tolerance_change: float = 1e-9) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not x.requires_grad:
            raise ValueError("x must require grad")
        self.x = x
        self.history = history
        self.lr = float(lr)
        self.tolerance_change = float(tolerance_change)
        n = x.numel()
        # Only slots already written are ever read, so no fill is needed.
        self._s = x.new_empty((history, n))
        self._y = x.new_empty((history, n))
        self._rho = x.new_zeros((history,))
        self._alpha = x.new_zeros((history,))
        self._h_diag = x.new_ones(())
        self._d: Tensor | None = None  # last direction
        self._t: Tensor | None = None  # last step length actually taken (tensor)
        self._prev_grad: Tensor | None = None
        self._safe = x.detach().clone()  # the last point whose loss and gradient were finite
        self._fresh = torch.ones((), dtype=torch.bool, device=x.device)  # next: a first step
        self.pairs = 0  # pairs pushed so far (a host counter: the ring's fill level)
        self.iterations = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            self.x.grad = None
        elif self.x.grad is not None:
            self.x.grad.zero_()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        with torch.enable_grad():
            loss = closure()
        if self.x.grad is None:
            raise RuntimeError("the closure did not compute a gradient for x")
        grad = self.x.grad.reshape(-1)
        flat = self.x.view(-1)
        # A non-finite loss or gradient (fixed-step L-BFGS can overshoot into overflow) must
        # not end the run: go back to the last finite point and restart from a first step.
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad).all()
        # torch: t = min(1, 1 / |g|_1) * lr on a first step, lr after.
        first_t = torch.clamp(grad.abs().sum().reciprocal(), max=1.0) * self.lr
        if self.iterations == 0:
            direction, t = grad.neg(), first_t
        else:
            assert self._d is not None and self._t is not None and self._prev_grad is not None
            direction = torch.where(self._fresh, grad.neg(), self._direction(grad, finite))
            t = torch.where(self._fresh, first_t, torch.full_like(first_t, self.lr))
        if self._prev_grad is None:
            self._prev_grad = grad.clone()
        else:
            self._prev_grad.copy_(grad)
        gtd = torch.dot(grad, direction)
        bad = ~finite
        t = torch.where((gtd > -self.tolerance_change) | bad, torch.zeros_like(t), t)
        direction = torch.where(bad, torch.zeros_like(direction), direction)
        self._safe.view(-1).copy_(torch.where(finite, flat, self._safe.view(-1)))
        flat.copy_(torch.where(bad, self._safe.view(-1), flat))
        self._rho.mul_(finite)  # a restart forgets the curvature learnt on the way out
        self._h_diag = torch.where(bad, torch.ones_like(self._h_diag), self._h_diag)
        self._fresh = bad
        flat.add_(direction * t)
        self._d, self._t = direction, t
        self.iterations += 1
        return loss

    def _direction(self, grad: Tensor, finite: Tensor) -> Tensor:
        """Store the newest pair and return -H g by the two-loop recursion."""
        assert self._d is not None and self._t is not None and self._prev_grad is not None
        slot = self.pairs % self.history
        s, y = self._s[slot], self._y[slot]
        torch.mul(self._d, self._t, out=s)
        torch.sub(grad, self._prev_grad, out=y)
        ys = torch.dot(y, s)
        accepted = (ys > CURVATURE_EPS) & finite & ~self._fresh
        # A rejected pair is stored as zeros with rho = 0: inert in the recursion, and never
        # a NaN that 0 * NaN would spread.
        s.copy_(torch.where(accepted, s, torch.zeros_like(s)))
        y.copy_(torch.where(accepted, y, torch.zeros_like(y)))
        self._rho[slot] = torch.where(accepted, ys.reciprocal(), torch.zeros_like(ys))
        self._h_diag = torch.where(accepted, ys / torch.dot(y, y), self._h_diag)
        self.pairs += 1
        count = min(self.pairs, self.history)
        newest_first = [(slot - i) % self.history for i in range(count)]
        q = grad.neg()
        for j in newest_first:
            self._alpha[j] = torch.dot(self._s[j], q) * self._rho[j]
            q.addcmul_(self._y[j], self._alpha[j], value=-1.0)
        r = q.mul_(self._h_diag)
        for j in reversed(newest_first):
            beta = torch.dot(self._y[j], r) * self._rho[j]
            r.addcmul_(self._s[j], self._alpha[j] - beta)
        return r
