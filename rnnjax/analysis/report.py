"""`diagnose`: every gradient-dynamics measurement of a cell in one report, and its figure.

A `Report` gathers, for one cell, its parameters and a batch of inputs:

- the norms of ∂c_T/∂c_t (backward view) and ∂c_t/∂c_0 (forward view), `jacobian_norms`;
- Pascanu et al.'s bound η (simple / multiplicative RNN) or the gate statistics (LSTM, GRU),
  `pascanu_bound`;
- ‖∂L/∂c_t‖, the T×T matrix ‖∂L_t/∂c_τ‖ and ‖∂L/∂θ‖ split by lag, for a loss (by default a
  fixed random linear read-out of every output), `loss_gradient_norms` and
  `temporal_contributions`;
- the leading Lyapunov exponents, `lyapunov_spectrum`;
- a one-line verdict — vanishing, exploding or healthy — from the end-to-end factor
  ‖∂c_T/∂c_0‖ (batch mean), with the numbers behind it; "non-finite" when the inputs,
  params or carry hold NaN / inf (or the norms come out NaN), never a verdict on them.

Ragged batches: with ``lengths`` each example is measured over its own steps — its carry is
held after its last step (∂c_t/∂c_{t-1} = I there), the loss ignores its padded steps and its
padded inputs are never read, so padding changes nothing, whatever it holds.

`plot_report` draws it so that the figure reads without the code. Norms are stored as log₁₀
values: they span hundreds of decades and would under/overflow float32 (and even float64).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.analysis._ragged import (
    RaggedParams,
    masked_step_loss,
    non_finite,
    ragged,
    ragged_bound,
    valid_steps,
)
from rnnjax.analysis.contributions import loss_gradient_norms, temporal_contributions
from rnnjax.analysis.lyapunov import lyapunov_spectrum
from rnnjax.analysis.norms import jacobian_norms
from rnnjax.analysis.pascanu import PascanuBound, pascanu_bound
from rnnjax.cells.base import Array, Cell
from rnnjax.driver import check_inputs

LOG10E = math.log10(math.e)


@dataclasses.dataclass
class Report:
    """The result of `diagnose` (NumPy arrays; log₁₀ of norms; t = 0..T unless stated).

    Attributes:
        cell: the cell's family name; hidden_size: H; carry_size: N (flat carry).
        T, batch: sequence length and number of examples.
        ord: "2" (spectral) or "fro".
        regime: "vanishing", "exploding", "healthy", or "non-finite" (NaN or inf in the
            inputs, params or carry, or norms that came out NaN: nothing can be concluded).
        verdict: one line with the regime and the numbers behind it.
        log10_backward: log₁₀‖∂c_T/∂c_t‖ per example, (B, T+1); log10_backward_mean (T+1,)
            is the log of the batch mean.
        log10_forward, log10_forward_mean: the same for ‖∂c_t/∂c_0‖.
        bound: `PascanuBound` (η or gate statistics), or None if it does not apply.
        loss_name: what the loss is.
        log10_loss_grad: log₁₀‖∂L/∂c_t‖ per example, (B, T+1).
        log10_contributions: log₁₀ of the batch mean of ‖∂L_t/∂c_τ‖, (T, T) (row t, column
            τ, both 1-based at index −1; −inf above the diagonal).
        log10_lag_norms: log₁₀‖G_k‖ for lags k = 0..T−1, (T,).
        lyapunov: the leading Lyapunov exponents (batch mean, per step), (k,), or None.
        rate_per_step: ‖∂c_T/∂c_0‖^(1/T), the average factor per step.
    """

    cell: str
    hidden_size: int
    carry_size: int
    T: int
    batch: int
    ord: str
    regime: str
    verdict: str
    log10_backward: np.ndarray
    log10_backward_mean: np.ndarray
    log10_forward: np.ndarray
    log10_forward_mean: np.ndarray
    bound: PascanuBound | None
    loss_name: str
    log10_loss_grad: np.ndarray | None
    log10_contributions: np.ndarray | None
    log10_lag_norms: np.ndarray | None
    lyapunov: np.ndarray | None
    rate_per_step: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (arrays as lists; −inf, i.e. an exact zero norm, as None)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, PascanuBound):
                value = value._asdict()
                if value["gate"] is not None:
                    value["gate"] = value["gate"]._asdict()
            out[field.name] = _jsonable(value)
        return out

    def save_json(self, path: str) -> None:
        """Writes `to_dict` as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def random_readout_loss(hidden_size: int, key: Array | None = None) -> Callable:
    """The default per-step loss L_t = mean over the batch of ⟨y_t, r⟩, r a fixed unit vector.

    A linear read-out makes ∂L_t/∂y_t = r / B the same at every step, so everything the
    report shows about time comes from the recurrence, not from the loss.
    """
    key = jax.random.key(0) if key is None else key
    r = jax.random.normal(key, (hidden_size,))
    r = r / jnp.linalg.norm(r)

    def step_loss(y_t: Array, t: Array) -> Array:
        del t
        return jnp.mean(y_t @ r)

    return step_loss


def classify(
    log10_end_to_end: float, vanishing_below: float, exploding_above: float
) -> tuple[str, str]:
    """("vanishing" | "exploding" | "healthy" | "non-finite", the comparison) from
    log₁₀‖∂c_T/∂c_0‖ (NaN: the norm is not defined, e.g. NaN inputs)."""
    if math.isnan(log10_end_to_end):
        return "non-finite", "is NaN"
    if log10_end_to_end < math.log10(vanishing_below):
        return "vanishing", f"< {vanishing_below:g}"
    if log10_end_to_end > math.log10(exploding_above):
        return "exploding", f"> {exploding_above:g}"
    return "healthy", f"within [{vanishing_below:g}, {exploding_above:g}]"


def _fmt_log10(x: float) -> str:
    """10^x as text even far outside float64's range: 3.2e-45, or 1e-400."""
    if not math.isfinite(x):
        return "0" if x < 0 else "inf"
    if abs(x) < 300:
        return f"{10.0**x:.2g}"
    return f"1e{x:.0f}"


def diagnose(
    cell: Cell,
    params: Any,
    xs: Array,
    carry: Any = None,
    *,
    lengths: Array | None = None,
    step_loss: Callable[[Array, Array], Array] | None = None,
    ord: int | str = 2,
    lyapunov_k: int | None = 8,
    transient: int | None = None,
    contributions: bool = True,
    vanishing_below: float = 1e-3,
    exploding_above: float = 1e3,
) -> Report:
    """Measures the gradient dynamics of ``cell`` on ``xs`` and returns a `Report`.

    The regime is read from the end-to-end factor ‖∂c_T/∂c_0‖ (log of the batch mean):
    below ``vanishing_below`` the first input's influence on the last carry has vanished,
    above ``exploding_above`` it has exploded; in between the cell is healthy over this T.
    NaN or inf in ``xs`` (at valid steps), ``params`` or ``carry`` — or norms that come out
    NaN — give the regime "non-finite" and a verdict that says where, never "healthy".

    Args:
        cell, params: the cell and its parameters.
        xs: (B, T, D) or (T, D).
        carry: initial carry (None: zeros).
        lengths: optional (B,) ints in [1, T] (batched xs only): example b is measured over
            its first ``lengths[b]`` steps. Its carry is held after them (∂c_t/∂c_{t-1} = I,
            so ‖∂c_T/∂c_t‖ is ‖∂c_{L_b}/∂c_t‖), its padded outputs are left out of the loss,
            its Lyapunov exponents are averaged over its own steps, and its padded inputs are
            never read (NaN there is fine). Concrete values only (not under ``jit``).
        step_loss: ``(y_t, t) -> L_t`` as in `temporal_contributions`; default
            `random_readout_loss`. With ``lengths`` it receives y_t = 0 for padded examples.
        ord: 2 or "fro", for `jacobian_norms`.
        lyapunov_k: how many Lyapunov exponents (capped at N); None or 0 to skip.
        transient: Lyapunov transient (default T // 4).
        contributions: compute the loss-gradient panels (T passes of a batched VJP).
        vanishing_below, exploding_above: the thresholds of the verdict.

    Returns:
        `Report`.

    Raises:
        ValueError: bad inputs, as in the tools it calls; B = 0; lengths of the wrong shape
            or outside [1, T]; or thresholds not 0 < v < 1 < e.

    Example:
        >>> report = diagnose(rj.lstm(64), params, xs, lengths=jnp.array([200, 150, 90]))
        >>> print(report.verdict)
        >>> plot_report(report).savefig("grads.png")
    """
    if not 0 < vanishing_below < 1 < exploding_above:
        raise ValueError(
            f"need 0 < vanishing_below < 1 < exploding_above, got {vanishing_below=}, "
            f"{exploding_above=}"
        )
    xs = check_inputs(params, xs)
    if xs.ndim == 3 and xs.shape[0] == 0:
        raise ValueError(f"xs has no examples: {xs.shape=} gives B=0")
    valid = None if lengths is None else valid_steps(xs, lengths)  # (B, T) bool
    problem = non_finite(params, xs, carry, valid)
    run_cell, run_params, run_xs = cell, params, xs
    if valid is not None:
        run_cell, run_params = ragged(cell), RaggedParams(params)
        xs = jnp.where(valid[..., None], xs, jnp.zeros((), xs.dtype))  # padding never read
        run_xs = jnp.concatenate([xs, valid[..., None].astype(xs.dtype)], axis=-1)  # (B, T, D+1)

    norms = jax.jit(lambda p, x, c: jacobian_norms(run_cell, p, x, c, ord=ord))(
        run_params, run_xs, carry
    )
    log_b = np.asarray(norms.log_backward, np.float64) * LOG10E
    log_f = np.asarray(norms.log_forward, np.float64) * LOG10E
    batched = log_b.ndim == 2
    log_b, log_f = (log_b, log_f) if batched else (log_b[None], log_f[None])
    T = log_b.shape[1] - 1
    one_carry = jax.eval_shape(lambda: cell.initial_carry(params, ()))
    N = sum(int(leaf.shape[-1]) for leaf in jax.tree.leaves(one_carry))
    mean_b = np.asarray(norms.log_backward_mean, np.float64) * LOG10E
    mean_f = np.asarray(norms.log_forward_mean, np.float64) * LOG10E

    try:
        bound: PascanuBound | None = (
            pascanu_bound(cell, params, xs, carry)
            if valid is None
            else ragged_bound(cell, params, xs, carry, valid)
        )
    except ValueError:  # e.g. a custom activation with unknown γ
        bound = None

    loss_fn = step_loss or random_readout_loss(cell.hidden_size)
    loss_name = "step_loss" if step_loss else "L = Σ_t mean_b ⟨y_t, r⟩ (r: random unit vector)"
    if valid is not None:
        loss_fn = masked_step_loss(loss_fn, jnp.asarray(valid))
        loss_name += "; padded steps left out"
    log_lg = log_c = log_lag = None
    if contributions:
        steps = jnp.arange(T, dtype=jnp.int32)
        total = lambda ys: jnp.sum(jax.vmap(loss_fn, in_axes=(-2, 0))(ys, steps))  # noqa: E731
        grads = jax.jit(lambda p, x, c: loss_gradient_norms(total, run_cell, p, x, c))(
            run_params, run_xs, carry
        )
        tc = jax.jit(lambda p, x, c: temporal_contributions(loss_fn, run_cell, p, x, c))(
            run_params, run_xs, carry
        )
        with np.errstate(divide="ignore"):
            log_lg = np.log10(np.asarray(grads.norms, np.float64)).reshape(-1, T + 1)
            matrix = np.asarray(tc.matrix, np.float64).reshape(-1, T, T).mean(axis=0)
            log_c = np.log10(matrix)
            log_lag = np.log10(np.asarray(tc.lag_norms, np.float64))

    lyap = None
    if lyapunov_k:
        k = min(int(lyapunov_k), N)
        tr = T // 4 if transient is None else transient
        lam = jax.jit(lambda p, x, c: lyapunov_spectrum(run_cell, p, x, c, k=k, transient=tr))(
            run_params, run_xs, carry
        )
        lam = np.asarray(lam, np.float64).reshape(-1, k)  # (B, k)
        if valid is not None:  # held steps add log 1 = 0: average over each example's own
            own = valid.sum(axis=1) - tr  # (B,) steps counted
            lam = lam[own > 0] * ((T - tr) / own[own > 0])[:, None]
        lyap = lam.mean(axis=0) if lam.size else None

    end = float(mean_b[0])  # log10 ‖∂c_T/∂c_0‖
    regime, comparison = classify(end, vanishing_below, exploding_above)
    rate = 10.0 ** (end / T) if math.isfinite(end) else 0.0
    if problem is not None or regime == "non-finite":
        regime = "non-finite"
        why = problem or f"‖∂c_T/∂c_0‖ = {_fmt_log10(end)} (the forward pass overflowed?)"
        parts = [f"non-finite: {why}; no verdict on the gradient dynamics"]
    else:
        parts = [
            f"{regime}: ‖∂c_T/∂c_0‖ = {_fmt_log10(end)} {comparison} over T = {T} steps "
            f"(×{rate:.3g} per step)"
        ]
        if valid is not None:
            parts[0] += f" (lengths {int(valid.sum(1).min())}..{int(valid.sum(1).max())})"
        if bound is not None and bound.eta is not None:
            parts.append(f"Pascanu η = γσ_max = {bound.eta:.3g} ({bound.verdict})")
        elif bound is not None and bound.gate is not None:
            parts.append(
                f"{bound.gate.gate} gate mean {bound.gate.mean:.3g} "
                f"(half-life {bound.gate.half_life:.3g} steps)"
            )
        if lyap is not None:
            parts.append(f"λ_max = {lyap[0]:.3g} per step")
    return Report(
        cell=cell.name,
        hidden_size=cell.hidden_size,
        carry_size=N,
        T=T,
        batch=log_b.shape[0],
        ord=str(ord),
        regime=regime,
        verdict="; ".join(parts),
        log10_backward=log_b,
        log10_backward_mean=mean_b,
        log10_forward=log_f,
        log10_forward_mean=mean_f,
        bound=bound,
        loss_name=loss_name,
        log10_loss_grad=log_lg,
        log10_contributions=log_c,
        log10_lag_norms=log_lag,
        lyapunov=lyap,
        rate_per_step=rate,
    )
