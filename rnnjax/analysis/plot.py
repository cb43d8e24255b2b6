"""`plot_report`: the figure of a `Report` (six panels, readable without the code).

Norms are drawn on log₁₀ axes from the report's log values (never exponentiated, so 10⁻⁴⁰⁰
plots as well as 10⁻⁴). The figure is a ``matplotlib.figure.Figure`` built without pyplot:
it works headless (``fig.savefig``) and displays in notebooks.
"""

from __future__ import annotations

import textwrap

import numpy as np

from rnnjax.analysis.report import LOG10E, Report

REGIME_COLOURS = {"vanishing": "tab:blue", "exploding": "tab:red", "healthy": "tab:green"}


def _finite(a: np.ndarray) -> np.ndarray:
    """−inf (an exact zero norm) becomes NaN so that matplotlib leaves a gap."""
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a), a, np.nan)


def _power_axis(ax, label: str) -> None:
    """A y axis of log₁₀ values labelled as powers of ten."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    def power(v, _):
        if abs(v - round(v)) < 1e-6:
            return f"$10^{{{round(v)}}}$"
        return f"{10.0**v:.2g}" if abs(v) < 300 else ""

    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(power))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def _norm_panel(ax, t, per_example, mean, title, label, reference=None) -> None:
    for row in per_example:
        ax.plot(t, _finite(row), color="0.6", lw=0.6, alpha=0.5)
    ax.plot(t, _finite(mean), color="tab:blue", lw=2, label="measured (batch mean)")
    if reference is not None:
        values, ref_label = reference
        ax.plot(t, values, "--", color="tab:red", lw=1.5, label=ref_label)
    data = _finite(per_example)
    if np.any(np.isfinite(data)):  # frame the measurement; a loose bound may leave the panel
        lo, hi = np.nanmin(data), np.nanmax(data)
        pad = max(0.3 * (hi - lo), 0.5)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set(title=title, xlabel="t")
    _power_axis(ax, label)
    ax.legend(fontsize=8, loc="best")


def _references(report: Report) -> tuple[tuple | None, tuple | None]:
    """The curves drawn beside the measurement: η^{T−t} and η^t, or the gate path."""
    T, b = report.T, report.bound
    t = np.arange(T + 1)
    if b is not None and b.eta is not None and b.eta > 0:
        step = np.log10(b.eta)
        label = f"Pascanu bound η^{{·}}, η = γσ_max = {b.eta:.3g}"
    elif b is not None and b.gate is not None:
        step = b.gate.mean_log * LOG10E
        label = (
            f"{b.gate.gate}-gate path alone, ≈{10**step:.3g}^{{·}} (not a bound: other paths add)"
        )
    else:
        return None, None
    return ((T - t) * step, label.replace("{·}", "{T−t}")), (t * step, label.replace("{·}", "{t}"))


def plot_report(report: Report):
    """Draws a `Report`: six panels and the verdict as the title.

    Panels: (1) ‖∂c_T/∂c_t‖ against t with Pascanu's bound η^{T−t} (or the gate path) beside
    it; (2) the forward view ‖∂c_t/∂c_0‖ with η^t; (3) ‖∂L/∂c_t‖; (4) the T×T heat map of
    ‖∂L_t/∂c_τ‖; (5) ‖∂L/∂θ‖ split by lag t − τ; (6) the numbers (bound, gates, Lyapunov).

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    T = report.T
    t = np.arange(T + 1)
    fig = Figure(figsize=(17, 9.5), layout="constrained")
    axes = fig.subplots(2, 3)
    back_ref, fwd_ref = _references(report)
    _norm_panel(
        axes[0, 0],
        t,
        report.log10_backward,
        report.log10_backward_mean,
        "How much of a change of c_t reaches c_T",
        "‖∂c_T/∂c_t‖",
        back_ref,
    )
    _norm_panel(
        axes[0, 1],
        t,
        report.log10_forward,
        report.log10_forward_mean,
        "How much of c_0 is left in c_t (forward view)",
        "‖∂c_t/∂c_0‖",
        fwd_ref,
    )

    ax = axes[0, 2]
    if report.log10_loss_grad is not None:
        mean = np.log10(np.mean(10.0 ** np.clip(report.log10_loss_grad, -300, 300), axis=0))
        _norm_panel(
            ax,
            t,
            report.log10_loss_grad,
            mean,
            "Gradient of the whole loss at each carry",
            "‖∂L/∂c_t‖",
        )
    else:
        ax.axis("off")

    ax = axes[1, 0]
    if report.log10_contributions is not None:
        image = ax.imshow(
            _finite(report.log10_contributions),
            origin="upper",
            cmap="viridis",
            extent=(0.5, T + 0.5, T + 0.5, 0.5),
            interpolation="nearest",
        )
        fig.colorbar(image, ax=ax, label="log₁₀ ‖∂L_t/∂c_τ‖")
        ax.set(
            title="How far back each loss term reaches (blank: τ > t)",
            xlabel="carry c_τ (τ)",
            ylabel="loss term L_t (t)",
        )
    else:
        ax.axis("off")

    ax = axes[1, 1]
    if report.log10_lag_norms is not None:
        lags = np.arange(T)
        ax.plot(lags, _finite(report.log10_lag_norms), color="tab:purple", lw=2)
        share = _long_lag_share(report.log10_lag_norms)
        ax.set(title="∂L/∂θ split by lag k = t − τ", xlabel="lag k (steps)")
        _power_axis(ax, "‖G_k‖")
        ax.text(
            0.98,
            0.95,
            f"lags ≥ {max(T // 10, 1)} carry {share:.2g}% of Σ‖G_k‖\n"
            "rescaling ∂L/∂θ (e.g. clipping)\nscales every lag alike",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    else:
        ax.axis("off")

    ax = axes[1, 2]
    ax.axis("off")
    ax.text(
        0.0, 1.0, _summary(report), transform=ax.transAxes, va="top", fontsize=9, family="monospace"
    )
    colour = REGIME_COLOURS.get(report.regime, "black")
    fig.suptitle("\n".join(textwrap.wrap(report.verdict, 150)), color=colour, fontsize=12)
    return fig


def _long_lag_share(log10_lag_norms: np.ndarray) -> float:
    """Percent of Σ_k ‖G_k‖ carried by lags k ≥ T/10."""
    values = 10.0 ** np.clip(np.asarray(log10_lag_norms, np.float64), -300, 300)
    values = np.where(np.isfinite(log10_lag_norms), values, 0.0)
    total = values.sum()
    cut = max(len(values) // 10, 1)
    return float(100.0 * values[cut:].sum() / total) if total > 0 else 0.0


def _summary(report: Report) -> str:
    lines = [
        f"cell         {report.cell}",
        f"hidden H     {report.hidden_size}   carry N {report.carry_size}",
        f"T            {report.T}   batch {report.batch}   norm ord {report.ord}",
        f"regime       {report.regime.upper()}",
        f"per step     ×{report.rate_per_step:.4g}  (‖∂c_T/∂c_0‖^(1/T))",
    ]
    b = report.bound
    if b is not None:
        lines += ["", "Pascanu et al. 2013:"]
        lines += textwrap.wrap(b.explanation, 58)
    if report.lyapunov is not None:
        lam = ", ".join(f"{v:.3g}" for v in report.lyapunov[:6])
        lines += ["", "Lyapunov exponents (per step):", f"  {lam}"]
        lines.append(
            "  λ_max < 0: trajectories converge"
            if report.lyapunov[0] < 0
            else "  λ_max > 0: chaotic, sensitive"
        )
    lines += ["", "loss: " + report.loss_name]
    return "\n".join(lines)
