"""Gradient dynamics of recurrent networks: how gradients flow (and fail to) through time.

BPTT multiplies per-step Jacobians, ∂c_t/∂c_τ = J_t ⋯ J_{τ+1} with J_t = ∂c_t/∂c_{t-1}; when
these products shrink or grow geometrically, gradients vanish or explode (lecture: "Training
RNNs is hard"; Pascanu, Mikolov & Bengio 2013). This package measures every part of it::

    from rnnjax import analysis

    analysis.carry_jacobians(cell, params, xs)        # J_t, (B, T, N, N)
    analysis.jacobian_norms(cell, params, xs)         # log ‖∂c_T/∂c_t‖, log ‖∂c_t/∂c_0‖
    analysis.loss_gradient_norms(loss, cell, params, xs)      # ‖∂L/∂c_t‖
    analysis.temporal_contributions(step_loss, cell, params, xs)  # ‖∂L_t/∂c_τ‖, ∂L/∂θ by lag
    analysis.pascanu_bound(cell, params)              # σ_max(W), γ, η, verdict; LSTM gates
    analysis.pascanu_regularizer(cell, params, xs, loss_fn=loss)  # Ω, differentiable
    analysis.simple_rnn_regularizer(W, dpx, dys)      # the same Ω from one backward pass
    analysis.clip_by_global_norm_with_stats(1.0)      # optax clipping + clip statistics
    analysis.lyapunov_spectrum(cell, params, xs, k=8) # Lyapunov exponents (QR method)
    analysis.cliff(ws, bs)                            # Pascanu's one-neuron gradient cliff
    analysis.fixed_points(cell, params, starts, x)    # fixed / slow points (Sussillo & Barak)
    report = analysis.diagnose(cell, params, xs)      # all of it, with a one-line verdict
    analysis.plot_report(report)                      # and its figure

Conventions: the carry is one flat vector per example (N = H, or 2H for the LSTM's [h, c]);
xs is batch-first (B, T, D) or (T, D); steps are t = 1..T and carries c_0..c_T; Jacobians are
in numerator layout, J[i, j] = ∂c_t[i]/∂c_{t-1}[j] (see `rnnjax.analysis._core`).
"""

from rnnjax.analysis.cliff import Cliff, cliff, plot_cliff
from rnnjax.analysis.clipping import (
    ClipStatsState,
    clip_by_global_norm_with_stats,
    clip_rate,
    clip_stats,
    clip_with_stats,
    with_clip_stats,
)
from rnnjax.analysis.contributions import (
    LossGradientNorms,
    TemporalContributions,
    loss_gradient_norms,
    temporal_contributions,
)
from rnnjax.analysis.fixed_points import FixedPoints, fixed_point_starts, fixed_points
from rnnjax.analysis.jacobians import carry_jacobians
from rnnjax.analysis.lyapunov import lyapunov_spectrum
from rnnjax.analysis.norms import JacobianNorms, jacobian_norms
from rnnjax.analysis.pascanu import (
    GateStats,
    PascanuBound,
    pascanu_bound,
    pascanu_regularizer,
    simple_rnn_regularizer,
)
from rnnjax.analysis.plot import plot_report
from rnnjax.analysis.report import Report, diagnose

__all__ = [
    "Cliff",
    "ClipStatsState",
    "FixedPoints",
    "GateStats",
    "JacobianNorms",
    "LossGradientNorms",
    "PascanuBound",
    "Report",
    "TemporalContributions",
    "carry_jacobians",
    "cliff",
    "clip_by_global_norm_with_stats",
    "clip_rate",
    "clip_stats",
    "clip_with_stats",
    "diagnose",
    "fixed_point_starts",
    "fixed_points",
    "jacobian_norms",
    "loss_gradient_norms",
    "lyapunov_spectrum",
    "pascanu_bound",
    "pascanu_regularizer",
    "plot_cliff",
    "plot_report",
    "simple_rnn_regularizer",
    "temporal_contributions",
    "with_clip_stats",
]
