"""Pascanu, Mikolov & Bengio (2013): the vanishing/exploding condition and the Ω regulariser.

For the simple RNN c_t = σ(x_t U + c_{t-1} W + b) one step's Jacobian is
J_t = diag(σ'(a_t)) Wᵀ (a_t the pre-activation), so with γ = sup |σ'|

.. math::
    \\| J_t \\| \\le \\| W \\|_2 \\, \\gamma = \\sigma_{max}(W)\\, \\gamma =: \\eta,
    \\qquad \\Big\\| \\frac{\\partial c_T}{\\partial c_t} \\Big\\| \\le \\eta^{T-t}.

η < 1 (σ_max(W) < 1/γ) is **sufficient** for vanishing gradients, so η > 1 is **necessary**
(not sufficient) for exploding ones; γ = 1 for tanh, 1/4 for the sigmoid. For a linear RNN the
spectral radius ρ(W) decides exactly (ρ < 1 vanishing, ρ > 1 exploding for generic vectors).

For the LSTM the bound on W says little: the cell state is carried by
c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t, whose own Jacobian ∂c_t/∂c_{t-1} is diagonal — diag(f_t)
without peepholes — so the forget gate decides how long the path lasts (f = 1: the identity,
"gradient 1"). For the GRU the update gate z_t plays that role (h_t = z_t ⊙ h_{t-1} + ...).

The regulariser (eq. 9; eq. 10 with squared norms, as in the paper's code) asks every step to
preserve the norm of the back-propagated error (its gradient, by default, as eq. 10 and the
paper's code take it: activations and errors constant, only W differentiated):

.. math::
    \\Omega = \\sum_k \\Bigg( \\frac{\\| \\frac{\\partial L}{\\partial c_{k+1}}
              \\frac{\\partial c_{k+1}}{\\partial c_k} \\|^2}
              {\\| \\frac{\\partial L}{\\partial c_{k+1}} \\|^2} - 1 \\Bigg)^2
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.analysis._core import Problem, batch_trajectory, flatten_carry, prepare, step_fn
from rnnjax.analysis.contributions import carry_gradients
from rnnjax.cells.base import ACTIVATIONS, Array, Cell, split_blocks


class GateStats(NamedTuple):
    """Statistics of the per-step factor d_t of a gated cell's direct memory path.

    Attributes:
        gate: "forget" (LSTM: d_t = diag(∂c_t/∂c_{t-1}), = f_t without peepholes) or
            "update" (GRU: d_t = z_t).
        mean, min, max: over examples, steps and units.
        mean_log: mean of log d_t: the path shrinks like exp(mean_log)^{T-t}.
        half_life: steps until the path halves, log(1/2) / mean_log (inf if mean_log >= 0).
        from_inputs: True if measured along the trajectory of the given xs; False if from the
            biases alone (zero input and state).
    """

    gate: str
    mean: float
    min: float
    max: float
    mean_log: float
    half_life: float
    from_inputs: bool


class PascanuBound(NamedTuple):
    """Result of `pascanu_bound` (plain Python floats, ready for JSON).

    Attributes:
        sigma_max: σ_max of the recurrent matrix (mRNN: the largest over the steps of xs of
            σ_max(W(x_t)); gated cells: the largest over the gate blocks).
        spectral_radius: ρ(W) = max |eig(W)| (None for the mRNN and gated cells).
        gamma: γ = sup |σ'| of the activation (None for gated cells).
        eta: η = γ σ_max, the bound on ‖∂c_t/∂c_{t-1}‖ (None for gated cells).
        verdict: "vanishing" (η < 1: sufficient), "may_explode" (η > 1: the necessary
            condition holds), "boundary" (η = 1 within 16 ulps of the params' dtype: an
            orthogonal float32 W) or "gated" (see ``gate``).
        explanation: one sentence with the numbers.
        gate: `GateStats` for the LSTM / GRU, else None.
    """

    sigma_max: float
    spectral_radius: float | None
    gamma: float | None
    eta: float | None
    verdict: str
    explanation: str
    gate: GateStats | None


def _gamma(cell: Cell, gamma: float | None) -> float:
    if gamma is not None:
        return float(gamma)
    name = getattr(cell.config, "activation", None)
    if name not in ACTIVATIONS:
        raise ValueError(
            f"γ = sup|σ'| is unknown for the {cell.name} cell's activation={name!r}; "
            f"pass gamma= explicitly"
        )
    return float(ACTIVATIONS[name][1])


def _sigma_max(W: Any) -> float:
    return float(np.linalg.norm(np.asarray(W, np.float64), ord=2))


def _gate_stats(gate: str, d: Any, from_inputs: bool) -> GateStats:
    values = np.asarray(d, np.float64)
    mean_log = float(np.mean(np.log(np.maximum(np.abs(values), 1e-300))))
    half_life = math.log(0.5) / mean_log if mean_log < 0 else math.inf
    lo, hi = float(values.min()), float(values.max())
    return GateStats(gate, float(values.mean()), lo, hi, mean_log, half_life, from_inputs)


def _memory_path(cell: Cell, params: Any, carries: Any, px: Array) -> Array:
    """The direct factor d = ∂m_t/∂m_{t-1} (recurrent matmul held fixed) of the memory leaf m.

    Read off the cell's ``pointwise`` by one JVP with a tangent of ones on the last carry leaf
    (element-wise cells: that JVP is the diagonal): f_t for the LSTM without peepholes, z_t
    for the GRU, a_t for the linear cells.

    Args:
        cell: a structured cell with a ``memory_gate``.
        params: its parameters.
        carries: carries c_{t-1} (pytree, leaves (..., H)).
        px: the projected inputs px_t, (..., G).

    Returns:
        (..., H).
    """
    s = cell.structure
    assert s is not None
    W = s.recurrent_weights(params)
    leaves, treedef = jax.tree.flatten(carries)
    hw = None if W is None else split_blocks(leaves[0] @ W, s.gates)
    up, px_b = tuple(s.unit_params(params)), split_blocks(px, s.gates)

    def memory(m):
        new, _ = s.pointwise(up, jax.tree.unflatten(treedef, [*leaves[:-1], m]), px_b, hw)
        return jax.tree.leaves(new)[-1]

    return jax.jvp(memory, (leaves[-1],), (jnp.ones_like(leaves[-1]),))[1]


def _gated_bound(cell: Cell, params: Any, xs: Any, carry: Any) -> PascanuBound:
    s = cell.structure
    assert s is not None and s.memory_gate is not None
    W = s.recurrent_weights(params)
    blocks = [] if W is None else split_blocks(W, s.gates)
    sigma = max((_sigma_max(Wk) for Wk in blocks), default=0.0)
    if xs is not None:
        prob = prepare(cell, params, xs, carry)
        states = batch_trajectory(prob, step_fn(cell, params, prob.unflatten))  # (B, T+1, N)
        d = _memory_path(cell, params, prob.unflatten(states[:, :-1]), prob.px)  # (B, T, H)
    else:  # the gate at zero input and zero state (σ of the bias for the LSTM and GRU)
        zero = jax.tree.map(jnp.zeros_like, cell.initial_carry(params, ()))
        px0 = cell.project(params, jnp.zeros((1, prepare_input_size(params))))[0]  # (G,)
        d = _memory_path(cell, params, zero, px0)  # (H,)
    stats = _gate_stats(s.memory_gate, d, xs is not None)
    where = "along the inputs" if xs is not None else "from the biases alone"
    explanation = (
        f"{cell.name}: the direct memory path is scaled by the {stats.gate} gate each step "
        f"(mean {stats.mean:.3f}, min {stats.min:.3f}, {where}): it decays like "
        f"{math.exp(stats.mean_log):.3f}^(T-t), half-life {stats.half_life:.3g} steps; "
        f"the Pascanu bound on W (max block σ_max = {sigma:.3f}) does not apply"
    )
    return PascanuBound(sigma, None, None, None, "gated", explanation, stats)


def prepare_input_size(params: Any) -> int:
    """D from ``params.U`` (1 for a cell without input weights)."""
    U = getattr(params, "U", None)
    return 1 if U is None else int(U.shape[0])


def pascanu_bound(
    cell: Cell, params: Any, xs: Any = None, carry: Any = None, *, gamma: float | None = None
) -> PascanuBound:
    """σ_max(W), γ, η = γ σ_max and the verdict of Pascanu et al.'s condition.

    What applies is read from the cell, not from its name: a structured cell
    (`rnnjax.cells.base.Structure`) with a ``memory_gate`` (LSTM, GRU, linear cells) gets the
    statistics of the gate that scales its direct memory path (see the module docstring),
    along ``xs`` if given, else at zero input and state; a structured cell without one (the
    Simple RNN) gets η = γ σ_max(W); a cell whose recurrent matrix changes with the input
    (its config has ``transition_matrices``, the multiplicative RNN) needs ``xs`` and gets the
    largest σ_max(W(x_t)) over all (example, step).

    Not jit-compatible: returns Python floats and strings.

    Args:
        cell, params: the cell and its parameters.
        xs: optional inputs (B, T, D) / (T, D) (required for the mRNN).
        carry: optional initial carry.
        gamma: override γ (for a custom activation).

    Returns:
        `PascanuBound`.

    Raises:
        ValueError: unknown activation (pass gamma), mRNN without xs, unsupported cell.

    Example:
        >>> cell = rj.simple_rnn(50, **rj.initializers.scheme("smart_tanh"))
        >>> pascanu_bound(cell, cell.init(jax.random.key(0), 2)).verdict
        'may_explode'          # ρ(W) = 0.95 but σ_max(W) > 1 for a sparse non-normal W

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013, section 2.1.
    """
    s = cell.structure
    transitions = getattr(cell.config, "transition_matrices", None)
    if s is not None and s.memory_gate is not None:
        return _gated_bound(cell, params, xs, carry)
    rho: float | None
    if s is not None and s.recurrent_weights(params) is not None:
        W = np.asarray(s.recurrent_weights(params), np.float64)
        sigma = _sigma_max(W)
        rho = float(np.max(np.abs(np.linalg.eigvals(W)))) if W.shape[0] == W.shape[1] else None
    elif transitions is not None:
        if xs is None:
            raise ValueError(
                f"the {cell.name} cell's recurrent matrix W(x_t) depends on the input: pass xs"
            )
        prob = prepare(cell, params, xs, carry)
        # one example at a time: (T, H, H) matrices W(x_t), exact SVDs (LAPACK)
        sigma = max(
            float(
                np.linalg.norm(np.asarray(transitions(params, px), np.float64), 2, (-2, -1)).max()
            )
            for px in prob.px
        )
        rho = None
    else:
        raise ValueError(
            f"pascanu_bound needs a structured cell (rnnjax.cells.base.Structure) or one whose "
            f"config gives transition_matrices; the {cell.name!r} cell has neither"
        )
    g = _gamma(cell, gamma)
    eta = g * sigma
    # η = 1 up to the rounding of the stored weights (an orthogonal float32 W has σ_max =
    # 1 ± a few ulps) is the boundary, not a side of it
    tol = 16 * float(np.finfo(jnp.result_type(*jax.tree.leaves(params))).eps)
    if abs(eta - 1) <= tol:
        verdict, why = "boundary", f"η = 1 (within {tol:.1g}): neither condition is decided"
    elif eta < 1:
        verdict, why = "vanishing", "η < 1 is sufficient for vanishing: ‖∂c_T/∂c_t‖ ≤ η^(T-t)"
    else:
        verdict, why = "may_explode", "η > 1 is necessary (not sufficient) for exploding"
    explanation = f"σ_max(W) = {sigma:.4g}, γ = {g:g}, η = γσ_max = {eta:.4g}: {why}"
    if rho is not None and getattr(cell.config, "activation", None) == "identity":
        explanation += f"; linear RNN: ρ(W) = {rho:.4g} decides ({'<' if rho < 1 else '>='} 1)"
    return PascanuBound(sigma, rho, g, eta, verdict, explanation, None)


GRADIENTS = ("paper", "through_activations")


def _check_gradient(gradient: str) -> None:
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient=}")


def _check_additive_recurrence(cell: Cell, params: Any, prob: Problem) -> None:
    """Raises unless the cell reads its recurrent matrix only as ``px + h W`` (see below).

    The paper's gradient differentiates W where it multiplies the previous output, with every
    activation held fixed; that is well defined when the step is pointwise maths of
    z = px + h_{k} W (and of the carry). A pure predicate, checked numerically on random
    values shaped like the arguments: ``recur(θ, c, px) == recur(θ with W = 0, c, px + h W)``.
    """
    W = getattr(params, "W", None)
    if W is None or jnp.ndim(W) != 2:
        raise ValueError(
            f"gradient='paper' differentiates the recurrent matrix params.W; the {cell.name} "
            f"cell has none: pass gradient='through_activations'"
        )
    with jax.ensure_compile_time_eval():
        keys = iter(jax.random.split(jax.random.key(0), 3 + len(jax.tree.leaves(params))))
        probe = jax.tree.map(
            lambda a: 0.5 * jax.random.normal(next(keys), jnp.shape(a), jnp.float32), params
        )
        c = 0.5 * jax.random.normal(next(keys), (prob.N,), jnp.float32)
        px = jax.random.normal(next(keys), (prob.px.shape[-1],), jnp.float32)
        carry = prob.unflatten(c)
        direct = flatten_carry(cell.recur(probe, carry, px)[0])
        z = px + carry.h @ probe.W  # (G,)
        moved = flatten_carry(cell.recur(probe._replace(W=jnp.zeros_like(probe.W)), carry, z)[0])
        additive = bool(jnp.allclose(direct, moved, rtol=1e-2, atol=1e-2))  # bf16 matmuls
    if not additive:
        raise ValueError(
            f"gradient='paper' needs a step that reads W only as px + h W (pointwise maths "
            f"after it); the {cell.name} cell's step does not (e.g. the GRU's reset gate "
            f"multiplies h W): pass gradient='through_activations'"
        )


def paper_gradient_supported(cell: Cell) -> bool:
    """Whether `pascanu_regularizer`'s default ``gradient="paper"`` covers this cell.

    True for cells whose step is pointwise maths of px + h W (Simple RNN, LSTM and its
    variants); False for the GRU, the multiplicative RNN and cells without a matrix W.
    """
    params = cell.init(jax.random.key(0), 1)
    try:
        _check_additive_recurrence(cell, params, prepare(cell, params, jnp.zeros((1, 1))))
    except ValueError:
        return False
    return True


def _pulled_back_paper(cell: Cell, params: Any, prob: Problem, states: Array, v: Array) -> Array:
    """u_{k+1} = v_{k+1} J_{k+1} with every activation constant and W live (eq. 10).

    With z = px + c_k W the step's Jacobian is J = (∂F/∂z) Wᵀ on the h-part of the carry plus
    the direct ∂F/∂c (the LSTM's f_t on its cell state), so v J = w Wᵀ + (direct part) with
    w = v ∂F/∂z = ∂(v·F)/∂px. w and the direct part are evaluated on the constant trajectory;
    only the W of w Wᵀ carries Ω's gradient.
    """
    const = jax.lax.stop_gradient
    step = step_fn(cell, const(params), prob.unflatten)

    def frozen(c_prev, px_t, v_t):  # (u at the current W, w), both constant
        _, pull = jax.vjp(step, c_prev, px_t)
        return pull(v_t)  # (N,), (G,)

    u0, w = jax.vmap(jax.vmap(frozen))(states[:, :-1], const(prob.px), v)  # (B, T, N), (B, T, G)
    delta = params.W - const(params.W)  # zero, but W's gradient flows through it
    zeros = prob.unflatten(jnp.zeros_like(u0))
    live_h = w @ delta.T  # (B, T, H)
    live = flatten_carry(zeros._replace(h=live_h.astype(u0.dtype)))  # (B, T, N)
    return const(u0) + live


def _pulled_back_through_activations(
    cell: Cell, params: Any, prob: Problem, states: Array, v: Array
) -> Array:
    """u_{k+1} = v_{k+1} J_{k+1}(θ) with c_k and v constant, differentiated through σ'(a) too."""
    step = step_fn(cell, params, prob.unflatten)

    def pulled_back(c_prev, px_t, v_t):  # (N,)
        return jax.vjp(lambda c: step(c, px_t), c_prev)[1](v_t)[0]

    return jax.vmap(jax.vmap(pulled_back))(states[:, :-1], jax.lax.stop_gradient(prob.px), v)


def pascanu_regularizer(
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
    loss_fn: Callable[[Array], Array] | None = None,
    *,
    carry_grads: Array | None = None,
    squared: bool = True,
    reduction: str = "mean",
    min_norm: float = 1e-20,
    gradient: str = "paper",
) -> Array:
    r"""Ω of Pascanu et al. (eq. 10 by default, eq. 9 with ``squared=False``), differentiable.

    .. math::
        \Omega = \sum_{k=0}^{T-1} \Big( \frac{\|v_{k+1} J_{k+1}\|^2}
                 {\|v_{k+1}\|^2} - 1 \Big)^2, \qquad
        v_{k+1} = \frac{\partial L}{\partial c_{k+1}}, \quad
        J_{k+1} = \frac{\partial c_{k+1}}{\partial c_k}
                = \mathrm{diag}\big(\sigma'(a_{k+1})\big) W^\top \ \text{(Simple RNN)}

    Ω's value does not depend on ``gradient``; its gradient does:

    - ``"paper"`` (default): eq. 10 as the paper and its code compute it. The paper's state
      x_k is the pre-activation and "x_k and ∂E/∂x_{k+1} are constants", so σ'(a_{k+1}) and
      v are fixed and only the explicit recurrent matrix is differentiated:
      v J = sg(v ⊙ σ'(a_{k+1})) Wᵀ — the code's ``tmp_x = (d_ht[1:] * (1 - ht**2)) @ W_hh.T``,
      differentiated before ``d_ht`` and ``ht`` are substituted. For any cell whose step is
      pointwise maths of z = px + c_k W (Simple RNN, LSTM with or without peepholes or coupled
      gates) the same rule holds every activation fixed and differentiates the W of
      ``w Wᵀ``, w = ∂(v·F)/∂z; other cells (GRU, multiplicative RNN) raise a ValueError.
    - ``"through_activations"``: c_k and v constant, but J_{k+1}(θ) is differentiated
      through σ'(a_{k+1}(W)) as well (the second-derivative terms the paper drops). Works for
      every cell.

    Only the recurrent matrix receives a gradient under ``"paper"``; under
    ``"through_activations"`` the projected inputs x_t U + b are constants, so U and b get none
    either. Terms whose ‖v‖² < ``min_norm`` are skipped, as in the paper's code
    (``bound = 1e-20``).

    Use it inside any loss; a train step (loss_fn of the outputs, targets closed over)::

        def objective(params, xs, targets):
            loss = lambda ys: jnp.mean((ys[:, -1] @ V - targets) ** 2)
            carry, ys = rj.unroll(cell, params, xs)
            omega = pascanu_regularizer(cell, params, xs, loss_fn=loss)
            return loss(ys) + 2.0 * omega

    Args:
        cell, params: the cell and its (differentiated) parameters.
        xs: (B, T, D) or (T, D).
        carry: initial carry c_0 (None: zeros).
        loss_fn: ``ys -> scalar`` as in `loss_gradient_norms` (ys = cell outputs, batch-first).
        carry_grads: instead of loss_fn, precomputed ∂L/∂c_t for t = 1..T as flat carries,
            (B, T, N) or (T, N) (e.g. ``loss_gradient_norms(...).grads[..., 1:, :]``).
        squared: eq. 10 (squared norms, the paper's code) or eq. 9 (plain norms).
        reduction: "mean" — the average over the (example, step) terms that count, as in the
            paper's code — or "sum" — Σ_k per sequence (eq. 9), averaged over the batch.
        min_norm: skip terms with ‖v‖² below this.
        gradient: "paper" or "through_activations" (above).

    Returns:
        Ω, a scalar (0 when every step preserves the error's norm).

    Raises:
        ValueError: neither or both of loss_fn / carry_grads, carry_grads of the wrong shape,
            unknown reduction or gradient, a cell that ``"paper"`` does not cover, or the
            errors of `loss_gradient_norms`.

    References:
        Pascanu, Mikolov & Bengio, ICML 2013, section 3.3, eq. 9–10; pascanur/trainingRNNs
        (``RNN.py``: ``tmp_reg`` and ``TT.grad(tmp_reg, W_hh)``).
    """
    if (loss_fn is None) == (carry_grads is None):
        raise ValueError("pass exactly one of loss_fn and carry_grads")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction=}")
    _check_gradient(gradient)
    const = jax.lax.stop_gradient
    prob = prepare(cell, params, xs, carry)
    if gradient == "paper":
        _check_additive_recurrence(cell, params, prob)
    if loss_fn is not None:
        _, grads = carry_gradients(loss_fn, cell, const(params), prob)  # (T+1, B, N)
        v = jnp.swapaxes(grads[1:], 0, 1)  # (B, T, N): ∂L/∂c_{k+1}
    else:
        v = jnp.asarray(carry_grads)
        v = v if prob.batched else v[None]
        want = (prob.px.shape[0], prob.T, prob.N)
        if v.shape != want:
            raise ValueError(
                f"carry_grads must have shape {want[int(not prob.batched) :]}, "
                f"got {v.shape[int(not prob.batched) :]}"
            )
    v = const(v)
    states = const(batch_trajectory(prob, step_fn(cell, const(params), prob.unflatten)))
    pull = _pulled_back_paper if gradient == "paper" else _pulled_back_through_activations
    u = pull(cell, params, prob, states, v)  # (B, T, N)
    return _omega_terms(u, v, min_norm=min_norm, squared=squared, reduction=reduction)


def simple_rnn_regularizer(
    W: Array,
    preact_grads: Array,
    output_grads: Array,
    *,
    squared: bool = True,
    reduction: str = "mean",
    min_norm: float = 1e-20,
) -> Array:
    r"""Ω of a Simple RNN (eq. 10, the paper's gradient) from ONE backward pass of the loss.

    For c_t = σ(a_t), a_t = x_t U + c_{t-1} W + b, the gradient of the loss with respect to
    the pre-activations, g_t = ∂L/∂a_t = v_t ⊙ σ'(a_t), already holds the product the
    regulariser needs: v_t J_t = g_t Wᵀ. With d_t = ∂L/∂y_t the loss's direct gradient on
    the outputs, the carry gradients follow without a second pass, v_t = d_t + g_{t+1} Wᵀ
    (g_{T+1} = 0), and

    .. math::
        \Omega = \operatorname{mean}_t \Big( \frac{\| \mathrm{sg}(g_t)\, W^\top \|^2}
                 {\| \mathrm{sg}(v_t) \|^2} - 1 \Big)^2

    is exactly `pascanu_regularizer` with ``gradient="paper"`` (tests compare them); its
    gradient reaches W only, through the explicit factor Wᵀ. g_t is the gradient with
    respect to the projected inputs x_t U + b (what ``backend="fused"`` returns), d_t that
    with respect to `rnnjax.unroll`'s outputs.

    Args:
        W: the recurrent matrix, (H, H) (differentiated).
        preact_grads: g, (B, T, H) or (T, H) (treated as constants).
        output_grads: d, the same shape (constants).
        squared, reduction, min_norm: as in `pascanu_regularizer`.

    Returns:
        Ω, a scalar.

    Raises:
        ValueError: shapes that disagree, or an unknown reduction.

    Example:
        >>> loss_of = lambda p, dpx, dys: ...   # the loss with zero probes added to px and ys
        >>> loss, (g_p, g, d) = jax.value_and_grad(loss_of, (0, 1, 2))(params, zeros, zeros)
        >>> omega, g_omega = jax.value_and_grad(simple_rnn_regularizer)(params.W, g, d)
    """
    g = jnp.asarray(preact_grads)
    d = jnp.asarray(output_grads)
    if g.shape != d.shape or g.ndim not in (2, 3) or g.shape[-1] != W.shape[-1]:
        raise ValueError(
            f"preact_grads and output_grads must both be (B, T, H) or (T, H) with H = "
            f"{W.shape[-1]}, got {g.shape} and {d.shape}"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction=}")
    const = jax.lax.stop_gradient
    g, d = const(g), const(d)
    g = g if g.ndim == 3 else g[None]  # (B, T, H)
    d = d if d.ndim == 3 else d[None]
    back = g @ const(W).T  # (B, T, H): g_t Wᵀ, the error reaching c_{t-1} through step t
    v = d + jnp.concatenate([back[:, 1:], jnp.zeros_like(back[:, :1])], axis=1)  # ∂L/∂c_t
    u = g @ W.T  # (B, T, H): v_t J_t with W live
    return _omega_terms(u, v, min_norm=min_norm, squared=squared, reduction=reduction)


def _omega_terms(u: Array, v: Array, *, min_norm: float, squared: bool, reduction: str) -> Array:
    """Ω = Σ_t (‖u_t‖ / ‖v_t‖ − 1)² from u_t = v_t J_t (B, T, N) and v_t = ∂L/∂c_t (B, T, N).

    Steps with ‖v_t‖² < min_norm are left out; ``squared`` compares the squared ratio;
    ``reduction`` "mean" averages over the kept steps, otherwise the sum is averaged over B.
    """
    num = jnp.sum(jnp.square(u), axis=-1)  # (B, T)
    den = jnp.sum(jnp.square(v), axis=-1)  # (B, T)
    valid = den >= min_norm
    ratio = num / jnp.where(valid, den, 1.0)
    ratio = ratio if squared else jnp.sqrt(ratio)
    terms = jnp.where(valid, jnp.square(ratio - 1.0), 0.0)  # (B, T)
    if reduction == "mean":
        return jnp.sum(terms) / jnp.maximum(jnp.sum(valid), 1)
    return jnp.sum(terms) / terms.shape[0]
