"""Box-constrained L-BFGS with a backtracking line search, one network evaluation per step.

Why not `torch.optim.LBFGS`: without a line search (one evaluation per iteration, as video
budgets need) its first step is min(1, 1/|g|_1) and its curvature test is the absolute
y.s > 1e-10, so its progress depends on the loss's absolute scale: the same problem with all
loss weights x1000 converged and x1 stalled (issue 10). With strong-Wolfe it costs several
evaluations per iteration and stalls as well on some pairs. It also reads values back to the
host several times per step, which on a GPU drains the launch queue. `BoxLBFGS` is built so
that nothing depends on the scale and nothing needs the host:

- **One evaluation per `step()`.** Each call evaluates the trial point the previous call
  chose and decides, by tensor arithmetic (`torch.where`, never a Python `if` on a value),
  whether to accept it (Armijo: f <= f_base + c1 * g_base . s) or to backtrack along the same
  direction (quadratic interpolation, kept within [0.1, 0.5] of the last step). So the budget
  counts network evaluations exactly, and a step that overshoots costs one evaluation instead
  of a ruined iterate.
- **Scale-free steps.** The first step (and any restart along -g) moves the largest pixel by
  `first_step` (image values are in [0, 1]); after that the L-BFGS step 1 with the initial
  inverse-Hessian scale y.s / y.y, or |s| / |y| after a step along negative curvature. The
  curvature test is relative (y.s > eps |y||s|). Multiplying the loss by any constant changes
  no decision (tests check 10^-3 .. 10^3).
- **Box constraints by projection.** Every trial point is clamped to [lo, hi], and a pixel at
  a bound whose gradient points out of the box is held there (its gradient and direction
  components are zeroed: projected L-BFGS). So every evaluated point is a valid image, and
  the returned image is the optimized one, not a clamped copy of an iterate outside [0, 1].
  The bounds may be per element (tensors): a video's warm frame keeps its reliable pixels
  within a few grey levels of the warped previous frame this way (`nstd.temporal.bounds`),
  a constraint in image units that no loss weight can move.

A rejected trial still advances the history ring with an inert pair (rho = 0: it drops out
of the two-loop recursion), because the ring position is a host counter that must not depend
on a device value. History memory is fixed from the start: 2 * history * numel floats.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ARMIJO_C1 = 1e-4  # sufficient decrease: a small fraction of the predicted linear decrease
CURVATURE_EPS = 1e-10  # a pair is used when y.s > CURVATURE_EPS * |y| * |s| (scale-free)
BACKTRACK_MIN, BACKTRACK_MAX = 0.1, 0.5  # next step within [0.1, 0.5] of a rejected one
FIRST_STEP = 0.15  # largest pixel change of a steepest-descent step (image in [0, 1]); tuned
# on the bench/convergence.py panel: 0.05 lost to Adam at 10-20 evaluations on fine textures


class BoxLBFGS:
    """L-BFGS on one tensor `x` kept inside [lo, hi]; one function evaluation per `step`.

    Args:
        x: the leaf tensor optimized (requires_grad, contiguous), any shape, float32. It is
            clamped into the box at once; after each `step` it holds the next trial point.
        history: curvature pairs kept.
        first_step: largest per-element change of a steepest-descent step.
        lo, hi: the box: floats, or tensors of x's shape (per-element bounds, lo <= hi).

    `step(closure)`: closure() must compute the loss at the current x, call backward() (so
    x.grad holds the gradient) and return the loss (a scalar tensor). Returns that loss, not
    read back to the host. The lowest loss seen is that of `best` (a copy kept by the
    caller, see `nstd.engine.stylizer`): the base point of the line search is always the
    best point evaluated so far.
    """

    def __init__(self, x: Tensor, history: int = 20, first_step: float = FIRST_STEP,
                 lo: float | Tensor = 0.0, hi: float | Tensor = 1.0) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not x.requires_grad:
            raise ValueError("x must require grad")
        if not x.is_contiguous():
            raise ValueError("x must be contiguous (optimize x.contiguous())")
        if not first_step > 0:
            raise ValueError(f"need first_step > 0, got {first_step}")
        self.x = x
        self.history = history
        self.first_step = float(first_step)
        self.lo, self.hi = _bounds(lo, hi, x)
        n = x.numel()
        self._s = x.new_zeros((history, n))
        self._y = x.new_zeros((history, n))
        self._rho = x.new_zeros((history,))
        self._alpha = x.new_zeros((history,))
        self._h = x.new_ones(())  # initial inverse-Hessian scale
        self._xb = x.new_zeros((n,))  # base point of the line search (best so far)
        self._fb = x.new_full((), float("inf"))
        self._gb = x.new_zeros((n,))  # projected gradient at the base
        self._d = x.new_zeros((n,))  # search direction from the base
        self._t = x.new_zeros(())  # step length of the current trial
        self._gd = x.new_zeros(())  # directional derivative g_base . d
        self.pairs = 0  # ring slots written (host counter)
        self.evaluations = 0
        with torch.no_grad():
            x.view(-1).copy_(x.view(-1).clamp(self.lo, self.hi))

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
        f = loss.detach().float()
        x = self.x.detach().reshape(-1)  # the point just evaluated (a view: read it first)
        g_raw = self.x.grad.reshape(-1)
        held = self._held(x, g_raw)
        g = torch.where(held, torch.zeros_like(g_raw), g_raw)
        finite = torch.isfinite(f) & torch.isfinite(g).all()
        if self.evaluations == 0:
            accept = finite
            d_new = self._feasible(x, -g, held)
            t_new, gd_new = self._first_t(d_new), torch.dot(g, d_new)
        else:
            s = x - self._xb
            accept = finite & (f <= self._fb + ARMIJO_C1 * torch.dot(self._gb, s))
            self._push_pair(s, g - self._gb, accept)
            d_lbfgs = self._feasible(x, self._two_loop(g), held)
            gd_lbfgs = torch.dot(g, d_lbfgs)
            # Not a descent direction (stale curvature): restart along -g.
            descent = gd_lbfgs < 0
            d_sd = self._feasible(x, -g, held)
            d_new = torch.where(descent, d_lbfgs, d_sd)
            t_new = torch.where(descent, torch.ones_like(self._t), self._first_t(d_sd))
            gd_new = torch.where(descent, gd_lbfgs, torch.dot(g, d_sd))
            # Rejected: the minimiser of the quadratic through f_base, its slope and f(t).
            t = self._t
            curvature = 2 * (f - self._fb - self._gd * t)
            t_quad = -self._gd * t * t / curvature
            t_quad = torch.where(torch.isfinite(t_quad) & (curvature > 0), t_quad,
                                 BACKTRACK_MIN * t)
            t_back = t_quad.clamp(min=BACKTRACK_MIN * t, max=BACKTRACK_MAX * t)
            t_new = torch.where(accept, t_new, t_back)
        self._xb.copy_(torch.where(accept, x, self._xb))
        self._fb.copy_(torch.where(accept, f, self._fb))
        self._gb.copy_(torch.where(accept, g, self._gb))
        self._d.copy_(torch.where(accept, d_new, self._d))
        self._gd.copy_(torch.where(accept, gd_new, self._gd))
        self._t.copy_(t_new)
        # The next trial point. Before the first finite evaluation the base is unset: stay.
        trial = (self._xb + self._t * self._d).clamp(self.lo, self.hi)
        x.copy_(torch.where(torch.isfinite(self._fb), trial, x))
        self.evaluations += 1
        return loss

    def _held(self, x: Tensor, g: Tensor) -> Tensor:
        """Elements at a bound whose descent direction -g points out of the box."""
        return ((x <= self.lo) & (g > 0)) | ((x >= self.hi) & (g < 0))

    def _feasible(self, x: Tensor, d: Tensor, held: Tensor) -> Tensor:
        """d with the held elements and those pointing out of the box at a bound zeroed."""
        out = held | ((x <= self.lo) & (d < 0)) | ((x >= self.hi) & (d > 0))
        return torch.where(out, torch.zeros_like(d), d)

    def _first_t(self, d: Tensor) -> Tensor:
        """Step length moving the largest element of d by `first_step`."""
        return self.first_step / d.abs().amax().clamp_min(1e-30)

    def _push_pair(self, s: Tensor, y: Tensor, accept: Tensor) -> None:
        """Store (s, y) when the step was accepted and the curvature is positive, else an
        inert pair; update the initial inverse-Hessian scale."""
        ys, yy, ss = torch.dot(y, s), torch.dot(y, y), torch.dot(s, s)
        good = accept & (ys > CURVATURE_EPS * torch.sqrt(yy * ss))
        slot = self.pairs % self.history
        self._s[slot] = torch.where(good, s, torch.zeros_like(s))
        self._y[slot] = torch.where(good, y, torch.zeros_like(y))
        self._rho[slot] = torch.where(good, ys.reciprocal(), torch.zeros_like(ys))
        # After a step along negative curvature, |s|/|y| still has the right magnitude.
        magnitude = torch.sqrt(ss / yy)
        fallback = torch.where(accept & torch.isfinite(magnitude) & (magnitude > 0),
                               magnitude, self._h)
        self._h = torch.where(good, ys / yy, fallback)
        self.pairs += 1

    def _two_loop(self, g: Tensor) -> Tensor:
        """-H g by the two-loop recursion over the stored pairs, newest first."""
        count = min(self.pairs, self.history)
        newest = (self.pairs - 1) % self.history
        order = [(newest - i) % self.history for i in range(count)]
        q = g.neg()
        for j in order:
            self._alpha[j] = torch.dot(self._s[j], q) * self._rho[j]
            q.addcmul_(self._y[j], self._alpha[j], value=-1.0)
        r = q.mul_(self._h)
        for j in reversed(order):
            beta = torch.dot(self._y[j], r) * self._rho[j]
            r.addcmul_(self._s[j], self._alpha[j] - beta)
        return r


def _bounds(lo: float | Tensor, hi: float | Tensor, x: Tensor
            ) -> tuple[float, float] | tuple[Tensor, Tensor]:
    """(lo, hi) as floats, or both as flat tensors on x's device when either is a tensor."""
    if not isinstance(lo, Tensor) and not isinstance(hi, Tensor):
        if not float(lo) < float(hi):
            raise ValueError(f"need lo < hi, got {lo}, {hi}")
        return float(lo), float(hi)
    flat = []
    for bound in (lo, hi):
        if isinstance(bound, Tensor):
            if bound.numel() != x.numel():
                raise ValueError(f"a bound tensor must have x's {x.numel()} elements, "
                                 f"got {bound.numel()}")
            flat.append(bound.detach().to(x.device, x.dtype).reshape(-1).contiguous())
        else:
            flat.append(torch.full((x.numel(),), float(bound), device=x.device, dtype=x.dtype))
    if bool((flat[0] > flat[1]).any()):
        raise ValueError("every lower bound must be <= its upper bound")
    return flat[0], flat[1]
