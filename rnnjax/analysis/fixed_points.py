r"""Fixed points and slow points of a recurrent network (Sussillo & Barak 2013).

Hold the input at a constant x* and look at the network as a map of its (flat) carry,
c ↦ F(c) = step(c, x*). A fixed point satisfies F(c*) = c*; Sussillo & Barak find them,
and the *slow points* where the dynamics nearly stop, by minimising the speed

.. math::
    q(c) = \tfrac12 \, \| F(c) - c \|^2

from many starting states (usually states the network visits), with an ordinary optimiser:
q = 0 at a fixed point, q small at a slow point. Around a point the dynamics are linear,
c_{t+1} − c* ≈ J (c_t − c*) with J = ∂F/∂c, and the eigenvalues of J classify it: for a
discrete-time map |λ| < 1 attracts and |λ| > 1 repels, so a point is *stable* (every |λ| < 1),
a *saddle* (some on each side: the unstable directions are the ones the state leaves along) or
*unstable* (every |λ| > 1).

::

    starts = analysis.fixed_point_starts(cell, params, xs, n=256, key=key, noise=0.05)
    fps = analysis.fixed_points(cell, params, starts, x=jnp.zeros(D))
    fps.points, fps.q, fps.kind, fps.eigenvalues     # unique points, sorted by q

The carry is flat as everywhere in `rnnjax.analysis` (N = H, or 2H for the LSTM's [h, c]).

References:
    Sussillo & Barak, "Opening the black box: low-dimensional dynamics in high-dimensional
    recurrent neural networks", Neural Computation 25(3), 2013.
    Golub & Sussillo, "FixedPointFinder", JOSS 2018.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.analysis._core import (
    batch_trajectory,
    carry_unflattener,
    check_int,
    flatten_carry,
    prepare,
    step_fn,
)
from rnnjax.cells.base import Array, Cell

KINDS = ("stable", "saddle", "unstable", "marginal")


class FixedPoints(NamedTuple):
    """Result of `fixed_points`: the unique points found, sorted by q (fixed points first).

    Attributes:
        points: (K, N) flat carries c*.
        q: (K,) the speed ½‖F(c*) − c*‖² at each.
        is_fixed: (K,) q ≤ ``fixed_tol`` (the others are slow points, q ≤ ``slow_tol``).
        eigenvalues: (K, N) complex eigenvalues of J = ∂F/∂c at each point, by decreasing |λ|.
        kind: one of `KINDS` per point: "stable" (every |λ| < 1), "unstable" (every |λ| > 1),
            "saddle" (some of each), "marginal" (the largest |λ| within ``marginal_tol`` of 1
            and none above it).
        unstable_dims: (K,) how many |λ| > 1 (the directions the state leaves along).
        counts: (K,) how many starts ended at each point.
        x: (D,) the constant input the map was built with.
    """

    points: np.ndarray
    q: np.ndarray
    is_fixed: np.ndarray
    eigenvalues: np.ndarray
    kind: tuple[str, ...]
    unstable_dims: np.ndarray
    counts: np.ndarray
    x: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.points.shape[0])


def _map(cell: Cell, params: Any, x: Array, N: int, template: Any):
    """F(c) = step(c, x*) on flat carries, and q(c) = ½‖F(c) − c‖²."""
    px = cell.project(params, x)  # (G,)
    step = step_fn(cell, params, carry_unflattener(template))

    def F(c):
        return step(c, px)  # (N,)

    def q(c):
        return 0.5 * jnp.sum(jnp.square(F(c) - c))

    return F, q


def _minimise(q, F, starts: Array, steps: int, learning_rate: float, newton_steps: int):
    """Adam on Σ q(c) (each start independently: q is separable), then Newton polishing."""
    opt = optax.adam(learning_rate)
    total = lambda cs: jnp.sum(jax.vmap(q)(cs))  # noqa: E731

    def body(carry, _):
        cs, state = carry
        grads = jax.grad(total)(cs)
        updates, state = opt.update(grads, state, cs)
        return (optax.apply_updates(cs, updates), state), None

    (cs, _), _ = jax.lax.scan(body, (starts, opt.init(starts)), None, length=steps)

    def newton(c):  # (J − I) δ = −(F(c) − c); kept only where it lowers q
        J = jax.jacfwd(F)(c)  # (N, N)
        delta = jnp.linalg.solve(J - jnp.eye(c.shape[0], dtype=c.dtype), c - F(c))
        new = c + delta
        better = jnp.all(jnp.isfinite(new)) & (q(new) < q(c))
        return jnp.where(better, new, c)

    for _ in range(newton_steps):
        cs = jax.vmap(newton)(cs)
    return cs, jax.vmap(q)(cs)


def _unique(points: np.ndarray, qs: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy clustering by q: indices of representatives and how many points each absorbs."""
    order = np.argsort(qs, kind="stable")
    reps: list[int] = []
    counts: list[int] = []
    for i in order:
        if reps:
            d = np.linalg.norm(points[reps] - points[i], axis=1)
            j = int(np.argmin(d))
            if d[j] <= tol:
                counts[j] += 1
                continue
        reps.append(int(i))
        counts.append(1)
    return np.asarray(reps, int), np.asarray(counts, int)


def classify(eigenvalues: np.ndarray, marginal_tol: float = 1e-3) -> tuple[str, int]:
    """(kind, number of |λ| > 1) of a point of a discrete-time map from J's eigenvalues."""
    mags = np.abs(np.asarray(eigenvalues))
    above = int(np.sum(mags > 1 + marginal_tol))
    below = int(np.sum(mags < 1 - marginal_tol))
    if above == 0 and below == mags.size:
        return "stable", 0
    if above == mags.size:
        return "unstable", above
    if above == 0:
        return "marginal", 0
    return "saddle", above


def fixed_points(
    cell: Cell,
    params: Any,
    starts: Array,
    x: Array | None = None,
    *,
    steps: int = 2000,
    learning_rate: float = 1e-2,
    newton_steps: int = 10,
    fixed_tol: float = 1e-10,
    slow_tol: float = 1e-4,
    unique_tol: float = 1e-3,
    marginal_tol: float = 1e-3,
) -> FixedPoints:
    r"""Fixed and slow points of c ↦ F(c) = step(c, x*) from many starts (Sussillo & Barak).

    Minimises q(c) = ½‖F(c) − c‖² from every start with Adam (``steps`` updates of
    ``learning_rate``), polishes with ``newton_steps`` Newton steps (J − I) δ = c − F(c) (a
    step is kept only where it lowers q), keeps the points with q ≤ ``slow_tol``, merges those
    within ``unique_tol`` of each other (the lowest q represents them) and classifies each by
    the eigenvalues of J = ∂F/∂c (see `classify`).

    Not jit-compatible (returns numpy arrays and strings); the minimisation itself is jitted.

    Args:
        cell, params: the network (one layer).
        starts: (S, N) flat initial carries (`fixed_point_starts` samples them from the states
            the network visits).
        x: (D,) the constant input x* (default zeros: the autonomous dynamics).
        steps, learning_rate: the Adam minimisation.
        newton_steps: Newton polishing steps after it (0: none).
        fixed_tol: q at or below which a point is fixed (float32 gives q ≈ 1e-14 at best).
        slow_tol: q above which a result is dropped (neither fixed nor slow).
        unique_tol: Euclidean distance within which two results are the same point.
        marginal_tol: |λ| within this of 1 counts as neither inside nor outside.

    Returns:
        `FixedPoints` (possibly empty), sorted by q.

    Raises:
        ValueError: starts not (S, N) for the cell's flat carry N, x of the wrong size, or
            bad settings.

    Example:
        >>> cell = rj.simple_rnn(2, activation="tanh", recurrent_init=rj.initializers.identity(2.0))
        >>> fps = fixed_points(cell, cell.init(key, 1), 2 * jax.random.normal(key, (64, 2)))
        >>> len(fps), fps.kind.count("stable"), fps.kind.count("saddle")
        (9, 4, 4)

    References:
        Sussillo & Barak, Neural Computation 2013, section 2.
    """
    template = cell.initial_carry(params, ())
    N = int(flatten_carry(template).shape[-1])
    starts = jnp.asarray(starts, jnp.float32)
    if starts.ndim != 2 or starts.shape[1] != N:
        raise ValueError(
            f"starts must be (S, N) flat carries with N = {N} for this {cell.name} cell, "
            f"got {starts.shape=}"
        )
    U = getattr(params, "U", None)
    D = None if U is None else int(U.shape[0])
    x = jnp.zeros((D,), jnp.float32) if x is None else jnp.asarray(x, jnp.float32)
    if x.ndim != 1 or (D is not None and x.shape[0] != D):
        raise ValueError(f"x must be one input vector (D,) with D = {D}, got {x.shape=}")
    check_int("steps", steps, 0)
    check_int("newton_steps", newton_steps, 0)
    for name, value in (("learning_rate", learning_rate), ("unique_tol", unique_tol)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {name}={value}")
    if not 0 <= fixed_tol <= slow_tol:
        raise ValueError(f"need 0 <= fixed_tol <= slow_tol, got {fixed_tol=}, {slow_tol=}")

    F, q = _map(cell, params, x, N, template)
    run = jax.jit(lambda s: _minimise(q, F, s, steps, learning_rate, newton_steps))
    cs, qs = jax.device_get(run(starts))
    cs, qs = np.asarray(cs, np.float64), np.asarray(qs, np.float64)
    keep = np.isfinite(qs) & (qs <= slow_tol) & np.all(np.isfinite(cs), axis=1)
    cs, qs = cs[keep], qs[keep]
    reps, counts = _unique(cs, qs, unique_tol)
    points, qs = cs[reps] if len(reps) else np.zeros((0, N)), qs[reps] if len(reps) else qs[:0]
    jac = jax.jit(jax.vmap(jax.jacfwd(F)))
    Js = np.asarray(jac(jnp.asarray(points, jnp.float32)), np.float64) if len(points) else None
    eigs = np.zeros((len(points), N), complex)
    kinds, dims = [], []
    for k in range(len(points)):
        assert Js is not None
        lam = np.linalg.eigvals(Js[k])
        eigs[k] = lam[np.argsort(-np.abs(lam), kind="stable")]
        kind, dim = classify(eigs[k], marginal_tol)
        kinds.append(kind)
        dims.append(dim)
    return FixedPoints(
        points=points,
        q=qs,
        is_fixed=qs <= fixed_tol,
        eigenvalues=eigs,
        kind=tuple(kinds),
        unstable_dims=np.asarray(dims, int),
        counts=counts,
        x=np.asarray(x),
    )


def fixed_point_starts(
    cell: Cell,
    params: Any,
    xs: Array,
    n: int,
    key: Array,
    *,
    carry: Any = None,
    noise: float = 0.0,
) -> Array:
    """``n`` flat carries drawn from the states c_1..c_T the network visits on ``xs``.

    Sussillo & Barak start the search from states on the network's own trajectories (plus a
    little noise), where the interesting slow dynamics lie.

    Args:
        cell, params: the network.
        xs: (B, T, D) or (T, D) inputs.
        n: how many starts.
        key: PRNG key (which states, and the noise).
        carry: optional initial carry.
        noise: standard deviation of Gaussian noise added to each start.

    Returns:
        (n, N) float32.
    """
    check_int("n", n, 1)
    prob = prepare(cell, params, xs, carry)
    states = batch_trajectory(prob, step_fn(cell, params, prob.unflatten))[:, 1:]  # (B, T, N)
    flat = states.reshape(-1, prob.N)  # (B·T, N)
    k_pick, k_noise = jax.random.split(key)
    picks = jax.random.randint(k_pick, (n,), 0, flat.shape[0])
    return flat[picks] + noise * jax.random.normal(k_noise, (n, prob.N), flat.dtype)


__all__ = ["KINDS", "FixedPoints", "classify", "fixed_point_starts", "fixed_points"]
