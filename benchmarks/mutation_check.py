"""Mutation check: one sign changed in each cell's maths and in each hand-written backward pass,
and the tests that must notice it.

For every `Mutation` in `MUTATIONS` the script copies the repository's source files (tracked
and untracked, not ignored) into a temporary directory, replaces the mutation's snippet
(which must occur exactly once in its file; otherwise it stops with ValueError), runs the
mutation's pytest selection in that copy (``PYTHONPATH=<copy>``, ``-x``), and records
**killed** (a test failed; the first failing test is named) or **survived** (every selected
test passed: a gap in the tests). A mutation of a C++ source builds the libraries from the
mutated source into the copy's own ``RNNJAX_CACHE`` (the real cached library is never
touched). Before the mutations run, every selection is run once on an unmutated copy: a
selection that already fails there would make "killed" meaningless, so the script stops.

Usage::

    PYTHONPATH=$PWD nice -n 19 python benchmarks/mutation_check.py           # all of them
    PYTHONPATH=$PWD python benchmarks/mutation_check.py --only gru.update_sign --no-write
    PYTHONPATH=$PWD python benchmarks/mutation_check.py --list

Writes ``benchmarks/results/mutation_check.{json,md}`` (unless ``--no-write`` or ``--only``).
``tests/test_mutation_check.py`` checks that every snippet still occurs exactly once, so the
list cannot go stale silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TIMEOUT_S = 600  # per pytest run; a mutation that hangs its tests counts as "timeout"


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One edit of one file.

    Attributes:
        name: a short id, "<module>.<what>".
        path: the file, relative to the repository root.
        original: the exact snippet to replace (must occur once in the file).
        mutated: what replaces it.
        meaning: what the edit does to the maths, in words.
        tests: the pytest selection (node ids, relative to the repository root).
    """

    name: str
    path: str
    original: str
    mutated: str
    meaning: str
    tests: tuple[str, ...]

    @property
    def native(self) -> bool:
        """True for the C++ kernel (rebuilt from the mutated source in the copy)."""
        return self.path.endswith(".cc")


def _m(name, path, original, mutated, meaning, *tests) -> Mutation:
    return Mutation(name, path, original, mutated, meaning, tuple(tests))


ORACLE = "tests/test_oracles.py::test_unroll_and_step_match_the_oracle"
LANCZOS = "tests/test_analysis_lanczos.py"
ORACLE_GRAD = "tests/test_oracles.py::test_gradients_match_finite_differences_of_the_oracle"
BACKENDS = "tests/test_backends.py"
PALLAS = "tests/test_pallas.py::test_equals_scan_with_lengths"
PALLAS_TPU = "tests/test_pallas_tpu.py::test_equals_scan_with_lengths"
LN = "tests/test_layer_norm_cells.py"
TREE = "tests/test_models_tree.py::test_batched_levels_equal_the_papers_equations"
LINEAR = "tests/test_linear_cells.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ---- the cells' maths ------------------------------------------------------------------
    _m(
        "simple_rnn.recurrent_sign",
        "rnnjax/cells/simple_rnn.py",
        "h = act(px[0] + hw[0])",
        "h = act(px[0] - hw[0])",
        "c_t = σ(x_t U + b − c_{t-1} W) (the analysis reads px and hw apart)",
        "tests/test_analysis_norms.py::test_closed_form_jacobian_equals_autodiff[simple_rnn]",
    ),
    _m(
        "pointwise_inputs.tied_sum_sign",
        "rnnjax/cells/base.py",
        "px[..., : lead * H] + hw[..., : lead * H]",
        "px[..., : lead * H] - hw[..., : lead * H]",
        "every structured step: tied gates z = x_t U + b − h_{t-1} W",
        f"{ORACLE}[simple_rnn_tanh]",
    ),
    _m(
        "lstm.candidate_sign",
        "rnnjax/cells/lstm.py",
        "c = f * c_prev + i * g",
        "c = f * c_prev - i * g",
        "c_t = f c_{t-1} − i c̃ (every LSTM variant)",
        f"{ORACLE}[lstm]",
    ),
    _m(
        "lstm.peephole_forget_sign",
        "rnnjax/cells/lstm.py",
        "f = sigmoid(zf + expand(p_f, zf) * c_prev)",
        "f = sigmoid(zf - expand(p_f, zf) * c_prev)",
        "peephole: f = σ(z_f − p_f c_{t-1})",
        f"{ORACLE}[lstm_peephole]",
    ),
    _m(
        "lstm.peephole_input_sign",
        "rnnjax/cells/lstm.py",
        "i = sigmoid(zi + expand(p_i, zi) * c_prev)",
        "i = sigmoid(zi - expand(p_i, zi) * c_prev)",
        "peephole: i = σ(z_i − p_i c_{t-1})",
        f"{ORACLE}[lstm_peephole]",
    ),
    _m(
        "lstm.peephole_output_sign",
        "rnnjax/cells/lstm.py",
        "o = sigmoid(zo + expand(p_o, zo) * c)",
        "o = sigmoid(zo - expand(p_o, zo) * c)",
        "peephole: o = σ(z_o − p_o c_t)",
        f"{ORACLE}[lstm_peephole]",
    ),
    _m(
        "lstm.coupled_input_sign",
        "rnnjax/cells/lstm.py",
        "i = 1.0 - f",
        "i = 1.0 + f",
        "coupled: i = 1 + f",
        f"{ORACLE}[lstm_coupled]",
    ),
    _m(
        "activate_blocks.sigmoid_shift_sign",
        "rnnjax/cells/base.py",
        "scale * jnp.tanh(scale * z) + (1.0 - scale)",
        "scale * jnp.tanh(scale * z) - (1.0 - scale)",
        "gates in one pass: σ(x) = ½ tanh(x/2) − ½",
        f"{ORACLE}[lstm]",
    ),
    _m(
        "layer_norm.centre_sign",
        "rnnjax/cells/layer_norm.py",
        "out = ((g - mu) * jax.lax.rsqrt(var + eps)).reshape(shape)",
        "out = ((g + mu) * jax.lax.rsqrt(var + eps)).reshape(shape)",
        "LN(a) = α (a + μ)/σ + β",
        f"{LN}::test_forward_equals_the_papers_equations[lstm-False]",
    ),
    _m(
        "layer_norm.bias_sign",
        "rnnjax/cells/layer_norm.py",
        "return out if bias is None else out + expand(bias, out)",
        "return out if bias is None else out - expand(bias, out)",
        "LN(a) = α â − β (the input-side bias b and β₃)",
        f"{LN}::test_forward_equals_the_papers_equations[lstm-False]",
    ),
    _m(
        "layer_norm_lstm.candidate_sign",
        "rnnjax/cells/layer_norm.py",
        "c = sigmoid(zf) * carry.c + sigmoid(zi) * jnp.tanh(zg)",
        "c = sigmoid(zf) * carry.c - sigmoid(zi) * jnp.tanh(zg)",
        "LN-LSTM: c_t = σ(f) c_{t-1} − σ(i) tanh(g)",
        f"{LN}::test_forward_equals_the_papers_equations[lstm-False]",
    ),
    _m(
        "layer_norm_gru.reset_bias_sign",
        "rnnjax/cells/layer_norm.py",
        "n = jnp.tanh(px_n + r * (hw_n + expand(b_hn, hw_n)))",
        "n = jnp.tanh(px_n + r * (hw_n - expand(b_hn, hw_n)))",
        "LN-GRU: n = tanh(a_n + r (LN(hW)_n − b_hn))",
        f"{LN}::test_forward_equals_the_papers_equations[gru-False]",
    ),
    _m(
        "lstmp.projection_sign",
        "rnnjax/cells/lstmp.py",
        "h = matmul(m, params.W_hr, cd)",
        "h = -matmul(m, params.W_hr, cd)",
        "LSTMP: h_t = −m_t W_hr",
        "tests/test_rnn_layer.py::test_whole_torch_modules_outputs_final_states_and_input_"
        "gradients[lstmp_2x_bi]",
    ),
    _m(
        "gru.update_sign",
        "rnnjax/cells/gru.py",
        "h = (1.0 - z) * n + z * carry.h",
        "h = (1.0 - z) * n - z * carry.h",
        "GRU (reset_after): h_t = (1 − z) n − z h_{t-1}",
        f"{ORACLE}[gru_reset_after]",
    ),
    _m(
        "gru.reset_bias_sign",
        "rnnjax/cells/gru.py",
        "n = jnp.tanh(px_n + r * (hw_n + expand(b_hn, hw_n)))",
        "n = jnp.tanh(px_n + r * (hw_n - expand(b_hn, hw_n)))",
        "GRU (reset_after): n = tanh(px_n + r (hw_n − b_hn))",
        f"{ORACLE}[gru_reset_after]",
    ),
    _m(
        "gru_cho.candidate_sign",
        "rnnjax/cells/gru.py",
        "n = jnp.tanh(px_n + matmul(r * h_prev, params.W[:, 2 * H :], cd))",
        "n = jnp.tanh(px_n - matmul(r * h_prev, params.W[:, 2 * H :], cd))",
        "GRU (Cho): n = tanh(px_n − (r h_{t-1}) W_n)",
        f"{ORACLE}[gru_cho]",
    ),
    _m(
        "gru_cho.update_sign",
        "rnnjax/cells/gru.py",
        "h = (1.0 - z) * n + z * h_prev",
        "h = (1.0 + z) * n + z * h_prev",
        "GRU (Cho): h_t = (1 + z) n + z h_{t-1}",
        f"{ORACLE}[gru_cho]",
    ),
    _m(
        "multiplicative_rnn.transition_sign",
        "rnnjax/cells/multiplicative.py",
        "h = act(px_h + matmul(factor, params.W_out, compute_dtype))",
        "h = act(px_h - matmul(factor, params.W_out, compute_dtype))",
        "mRNN: h_t = σ(x_t U + b − h_{t-1} W(x_t))",
        f"{ORACLE}[multiplicative_rnn]",
    ),
    _m(
        "diagonal_linear_rnn.decay_sign",
        "rnnjax/cells/linear.py",
        "a = jnp.broadcast_to(expand(jax.nn.sigmoid(nu), px_h), px_h.shape)",
        "a = jnp.broadcast_to(expand(jax.nn.sigmoid(-nu), px_h), px_h.shape)",
        "diagonal linear RNN: a = σ(−ν)",
        f"{ORACLE}[diagonal_linear_rnn]",
    ),
    _m(
        "min_gru.input_sign",
        "rnnjax/cells/linear.py",
        "return 1.0 - z, z * h_tilde",
        "return 1.0 - z, -z * h_tilde",
        "minGRU: h_t = (1 − z) h_{t-1} − z h̃",
        f"{ORACLE}[min_gru]",
    ),
    _m(
        "min_lstm.ratio_sign",
        "rnnjax/cells/linear.py",
        "log_ratio = jax.nn.log_sigmoid(ki) - jax.nn.log_sigmoid(kf)",
        "log_ratio = jax.nn.log_sigmoid(ki) + jax.nn.log_sigmoid(kf)",
        "minLSTM: the normalisation uses log i + log f",
        f"{ORACLE}[min_lstm]",
    ),
    _m(
        "linear_cells.step_sign",
        "rnnjax/cells/linear.py",
        "h = a * carry.h + b",
        "h = a * carry.h - b",
        "every linear cell's step (scan form): h_t = a h_{t-1} − b",
        f"{ORACLE}[min_gru]",
    ),
    _m(
        "child_sum.forget_sign",
        "rnnjax/models/treelstm.py",
        "f = jax.nn.sigmoid(p_f[..., None, :] + h_kids @ params.W_f)",
        "f = jax.nn.sigmoid(p_f[..., None, :] - h_kids @ params.W_f)",
        "Child-Sum Tree-LSTM: f_jk = σ(x U_f + b_f − h_k W_f)",
        f"{TREE}[child-sum]",
    ),
    _m(
        "n_ary.forget_sign",
        "rnnjax/models/treelstm.py",
        "f = jax.nn.sigmoid(px[..., None, 3 * H :] + z_f)",
        "f = jax.nn.sigmoid(px[..., None, 3 * H :] - z_f)",
        "N-ary Tree-LSTM: f_jk = σ(x U_f + b_f − Σ_ℓ h_ℓ W_kℓ)",
        f"{TREE}[n-ary]",
    ),
    _m(
        "tree_lstm.leaf_sign",
        "rnnjax/models/treelstm.py",
        "c = jax.nn.sigmoid(i) * jnp.tanh(u)\n",
        "c = -jax.nn.sigmoid(i) * jnp.tanh(u)\n",
        "both Tree-LSTMs' leaves: c = −σ(i) tanh(u)",
        f"{TREE}[child-sum]",
    ),
    # ---- "fused": the generic custom_vjp backward ------------------------------------------
    _m(
        "fused.bwd_dh_sign",
        "rnnjax/kernels/fused.py",
        "dprev[0] = dprev[0] + matmul(dhw_t, W_t, s.compute_dtype)",
        "dprev[0] = dprev[0] - matmul(dhw_t, W_t, s.compute_dtype)",
        "fused backward: dh_{t-1} gets − dhw_t Wᵀ",
        f"{BACKENDS}::test_fused_equals_scan[lstm]",
    ),
    _m(
        "fused.bwd_dW_sign",
        "rnnjax/kernels/fused.py",
        "dW = sum_outer(h_prev, dhw, s.compute_dtype).astype(W.dtype)",
        "dW = -sum_outer(h_prev, dhw, s.compute_dtype).astype(W.dtype)",
        "fused backward: dW = −Σ_t h_{t-1}ᵀ dhw_t",
        f"{BACKENDS}::test_fused_equals_scan[lstm]",
    ),
    _m(
        "fused.bwd_unit_params_sign",
        "rnnjax/kernels/fused.py",
        "dup = jax.tree.map(jnp.add, dup, dup_t)",
        "dup = jax.tree.map(jnp.subtract, dup, dup_t)",
        "fused backward: per-unit parameters' gradients summed with alternating sign",
        f"{BACKENDS}::test_fused_equals_scan_with_lengths_and_reverse[lstm_peephole]",
        f"{BACKENDS}::test_fused_equals_scan[gru]",
    ),
    _m(
        "fused.bwd_untied_sign",
        "rnnjax/kernels/fused.py",
        "blocks.append(dhw_untied[j])",
        "blocks.append(-dhw_untied[j])",
        "fused backward: dW of the untied blocks (the GRU's W_n) negated",
        f"{BACKENDS}::test_fused_equals_scan[gru]",
    ),
    _m(
        "fused.bwd_masked_cotangent",
        "rnnjax/kernels/fused.py",
        "dprev = [jnp.where(valid, d, o) for d, o in zip(dprev, dleaves, strict=True)]",
        "dprev = [jnp.where(valid, d, -o) for d, o in zip(dprev, dleaves, strict=True)]",
        "fused backward: past the length the carry's cotangent passes negated",
        f"{BACKENDS}::test_fused_equals_scan_with_lengths_and_reverse[lstm]",
    ),
    _m(
        "fused.bwd_recomputed_h",
        "rnnjax/kernels/fused.py",
        "h_next = jnp.where(t + 1 < T, h_t, kept)  # (N, H)",
        "h_next = jnp.where(t + 1 < T, -h_t, kept)  # (N, H)",
        "fused backward: the recomputed h_t that dW reads as h_{t-1} negated (LSTM)",
        f"{BACKENDS}::test_fused_equals_scan[lstm]",
    ),
    # ---- jacobian_norms' Lanczos rounds: the reference and its native twin ----------------
    _m(
        "lanczos.reference_bottom_eigenvector",
        "rnnjax/analysis/norms.py",
        "coeffs = jnp.linalg.eigh(H)[1][:, -1]  # (k,) the top eigenvector",
        "coeffs = jnp.linalg.eigh(H)[1][:, 0]  # (k,) the top eigenvector",
        "Lanczos reference: the Ritz vector of the smallest eigenvalue",
        LANCZOS,
    ),
    _m(
        "lanczos_cpu.gram_pass_row",
        "rnnjax/analysis/lanczos_cpu.cc",
        "Store(g + j, Load(g + j) + t0 * Load(r0 + j) + t1 * Load(r1 + j)",
        "Store(g + j, Load(g + j) + t0 * Load(r0 + j) + t1 * Load(r0 + j)",
        "C++ Lanczos: MᵀM x adds the wrong row in its one pass",
        LANCZOS,
    ),
    _m(
        "lanczos_cpu.residual_ignored",
        "rnnjax/analysis/lanczos_cpu.cc",
        "MtMx[i] = MtMx[i] / safe - sigma * x[i];",
        "MtMx[i] = 0.0f * MtMx[i];",
        "C++ Lanczos: stops after one step (residual read as 0)",
        LANCZOS,
    ),
    # ---- "fused_cpu": the C++ backward loops and their wrapper -----------------------------
    _m(
        "fused_cpu.lstm_bwd_recomputed_h",
        "rnnjax/kernels/fused_cpu.cc",
        "hs[j] = o * tc;",
        "hs[j] = -o * tc;",
        "C++ LSTM backward: the recomputed h_t that dW reads as h_{t-1} negated",
        f"{BACKENDS}::test_fused_cpu_equals_scan[lstm]",
    ),
    _m(
        "fused_cpu.team_affinity_restored",
        "rnnjax/kernels/fused_cpu.cc",
        "if (pinned_) pthread_setaffinity_np(pthread_self(), sizeof(allowed_), &allowed_);",
        "(void)allowed_;",
        "C++ team: the calling thread left pinned to one CPU after the loop",
        f"{BACKENDS}::test_fused_cpu_team_leaves_thread_affinity_as_it_was[lstm]",
    ),
    _m(
        "fused_cpu.lstm_bwd_forget_sign",
        "rnnjax/kernels/fused_cpu.cc",
        "dzs[H + j] = dcj * cp[j] * f * (1.0f - f);",
        "dzs[H + j] = -dcj * cp[j] * f * (1.0f - f);",
        "C++ LSTM backward: d z_f negated",
        f"{BACKENDS}::test_fused_cpu_equals_scan[lstm]",
    ),
    _m(
        "fused_cpu.lstm_bwd_cell_carry_sign",
        "rnnjax/kernels/fused_cpu.cc",
        "dcn[j] = dcj * f;",
        "dcn[j] = -dcj * f;",
        "C++ LSTM backward: dc_{t-1} = −dc_t f",
        f"{BACKENDS}::test_fused_cpu_equals_scan[lstm]",
    ),
    _m(
        "fused_cpu.gru_bwd_update_sign",
        "rnnjax/kernels/fused_cpu.cc",
        "const float dz = dhj * (hp[j] - nj) * z * (1.0f - z);",
        "const float dz = dhj * (nj - hp[j]) * z * (1.0f - z);",
        "C++ GRU backward: d z uses (n − h_{t-1})",
        f"{BACKENDS}::test_fused_cpu_equals_scan[gru]",
    ),
    _m(
        "fused_cpu.gru_bwd_reset_product_sign",
        "rnnjax/kernels/fused_cpu.cc",
        "dan[2 * H + j] = dn * r;",
        "dan[2 * H + j] = -dn * r;",
        "C++ GRU backward: d(h W_n) = −dn r (reaches dh_{t-1})",
        f"{BACKENDS}::test_fused_cpu_equals_scan[gru]",
    ),
    _m(
        "fused_cpu.gru_bwd_b_hn_sign",
        "rnnjax/kernels/fused_cpu.py",
        "db_hn = jnp.sum(da[..., 2 * H :], axis=(0, 1))",
        "db_hn = -jnp.sum(da[..., 2 * H :], axis=(0, 1))",
        "fused_cpu GRU wrapper: d b_hn negated",
        f"{BACKENDS}::test_fused_cpu_equals_scan[gru]",
    ),
    _m(
        "fused_cpu.lstm_bwd_h_prev_shift",
        "rnnjax/kernels/fused_cpu.cc",
        "(t + 1 < T ? HP + ((t + 1) * N + n) * H",
        "(t + 1 < T ? HP + (t * N + n) * H",
        "C++ LSTM backward: h_t written as step t's h_{t-1} (dW pairs h_t with d_t)",
        f"{BACKENDS}::test_fused_cpu_equals_scan[lstm]",
    ),
    # ---- "pallas": the persistent backward kernel (shared by "pallas_verified") ------------
    _m(
        "pallas.bwd_shares_sign",
        "rnnjax/kernels/pallas_kernels.py",
        "dh = dh + share",
        "dh = dh - share",
        "Pallas backward: dh_{t-1} = direct term − Σ slices' dhw Wᵀ",
        f"{PALLAS}[lstm-pallas]",
    ),
    _m(
        "pallas.bwd_output_cotangent_sign",
        "rnnjax/kernels/pallas_kernels.py",
        "cot = [cot[0] + dhseq_ref[t, prog.rows, prog.units], *cot[1:]]",
        "cot = [cot[0] - dhseq_ref[t, prog.rows, prog.units], *cot[1:]]",
        "Pallas backward: the output's cotangent dy_t enters negated",
        f"{PALLAS}[gru-pallas]",
    ),
    _m(
        "pallas.bwd_unit_params_sign",
        "rnnjax/kernels/pallas_kernels.py",
        "dpv = [a + jnp.where(valid, d, zero) for a, d in zip(dpv, dpv_t, strict=True)]",
        "dpv = [a - jnp.where(valid, d, zero) for a, d in zip(dpv, dpv_t, strict=True)]",
        "Pallas backward: per-unit parameters' gradients negated",
        f"{PALLAS}[lstm_peephole-pallas]",
    ),
    _m(
        "pallas.bwd_dW_sign",
        "rnnjax/kernels/pallas.py",
        'dw = jnp.einsum("tbi,tbj->ij", h_prev, dhw).astype(w.dtype)',
        'dw = -jnp.einsum("tbi,tbj->ij", h_prev, dhw).astype(w.dtype)',
        "Pallas custom_vjp: dW = −Σ_t h_{t-1}ᵀ dhw_t",
        f"{PALLAS}[simple_rnn-pallas]",
    ),
    # ---- the hoisted input projection's derivative (cells.base.affine, one GEMM on CPU) ----
    _m(
        "affine.jvp_weight_sign",
        "rnnjax/cells/base.py",
        "d_out = da2 @ w + a1 @ dwb  # (M, N)",
        "d_out = da2 @ w - a1 @ dwb  # (M, N)",
        "x U + b on CPU: d(x U + b) = dx U − [x, 1] [dU; db]",
        "tests/test_cells.py::test_affine_equals_the_plain_expression_with_gradients",
    ),
    # ---- "pallas_tpu": the Mosaic TPU backward kernel ------------------------------------
    _m(
        "pallas_tpu.bwd_recurrent_sign",
        "rnnjax/kernels/pallas_tpu.py",
        "dh = dh + compute_dot(dhw[k], w_ref[:, cols], plan, transpose_w=True)",
        "dh = dh - compute_dot(dhw[k], w_ref[:, cols], plan, transpose_w=True)",
        "TPU backward: dh_{t-1} = direct term − Σ_k dhw_k W_kᵀ",
        f"{PALLAS_TPU}[lstm]",
    ),
    _m(
        "pallas_tpu.bwd_output_cotangent_sign",
        "rnnjax/kernels/pallas_tpu.py",
        "cot = [cot[0] + dhseq_ref[i], *cot[1:]]",
        "cot = [cot[0] - dhseq_ref[i], *cot[1:]]",
        "TPU backward: the output's cotangent dy_t enters negated",
        f"{PALLAS_TPU}[gru]",
    ),
    _m(
        "pallas_tpu.bwd_unit_params_sign",
        "rnnjax/kernels/pallas_tpu.py",
        "dpv = [a + jnp.where(valid, d, zeros) for a, d in zip(dpv, dpv_t, strict=True)]",
        "dpv = [a - jnp.where(valid, d, zeros) for a, d in zip(dpv, dpv_t, strict=True)]",
        "TPU backward: per-unit parameters' gradients negated",
        f"{PALLAS_TPU}[lstm_peephole]",
    ),
    # ---- "pallas_verified": its own element-wise code (forward, and backward by its VJP) ---
    _m(
        "pallas_verified.lstm_candidate_sign",
        "rnnjax/kernels/pallas_verified.py",
        "c = f * c_prev + i * jnp.tanh(zg)",
        "c = f * c_prev - i * jnp.tanh(zg)",
        "verified LSTM: c_t = f c_{t-1} − i c̃",
        f"{PALLAS}[lstm-pallas_verified]",
    ),
    _m(
        "pallas_verified.peephole_output_sign",
        "rnnjax/kernels/pallas_verified.py",
        "o = jax.nn.sigmoid(zo + p_o * c if peephole else zo)",
        "o = jax.nn.sigmoid(zo - p_o * c if peephole else zo)",
        "verified peephole LSTM: o = σ(z_o − p_o c_t)",
        f"{PALLAS}[lstm_peephole-pallas_verified]",
    ),
    _m(
        "pallas_verified.gru_update_sign",
        "rnnjax/kernels/pallas_verified.py",
        "return [(1.0 - z) * n + z * h_prev]",
        "return [(1.0 - z) * n - z * h_prev]",
        "verified GRU: h_t = (1 − z) n − z h_{t-1}",
        f"{PALLAS}[gru-pallas_verified]",
    ),
    _m(
        "pallas_verified.simple_rnn_sign",
        "rnnjax/kernels/pallas_verified.py",
        "return [act(px[0] + hw[0])]",
        "return [act(px[0] - hw[0])]",
        "verified Simple RNN: c_t = σ(x_t U + b − c_{t-1} W)",
        f"{PALLAS}[simple_rnn-pallas_verified]",
    ),
    # ---- "associative": its custom_vjp backward (a reverse associative scan) ---------------
    _m(
        "associative.bwd_da_sign",
        "rnnjax/kernels/associative.py",
        "return dh * h_prev, dh",
        "return -dh * h_prev, dh",
        "associative backward: da_t = −dh_t h_{t-1}",
        f"{LINEAR}::test_linear_recurrence_matches_reference_and_its_gradient",
    ),
    _m(
        "associative.bwd_shift_sign",
        "rnnjax/kernels/associative.py",
        "a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)",
        "a_next = jnp.concatenate([-a[1:], jnp.zeros_like(a[:1])], axis=0)",
        "associative backward: dh_t = g_t − a_{t+1} dh_{t+1}",
        f"{LINEAR}::test_linear_recurrence_matches_reference_and_its_gradient",
    ),
)


# ---------------------------------------------------------------------------------------------
# Copy, edit, run
# ---------------------------------------------------------------------------------------------


def source_files(repo: Path = REPO) -> list[str]:
    """The repository's files as a fresh clone plus uncommitted work would have them."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (repo / p).is_file()]


def copy_repository(dest: Path, repo: Path = REPO) -> Path:
    """Copies the source files into ``dest`` (created); returns it."""
    for rel in source_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)
    return dest


def occurrences(mutation: Mutation, root: Path = REPO) -> int:
    """How many times the mutation's snippet occurs in its file under ``root``."""
    return (root / mutation.path).read_text().count(mutation.original)


def apply(mutation: Mutation, root: Path) -> None:
    """Replaces the snippet in the copy at ``root``; ValueError unless it occurs exactly once."""
    if mutation.original == mutation.mutated:
        raise ValueError(f"mutation {mutation.name!r} changes nothing")
    n = occurrences(mutation, root)
    if n != 1:
        raise ValueError(
            f"mutation {mutation.name!r}: the snippet {mutation.original!r} occurs {n} times "
            f"in {mutation.path} (need exactly 1)"
        )
    path = root / mutation.path
    path.write_text(path.read_text().replace(mutation.original, mutation.mutated))


def _environment(root: Path, jax_cache: Path, native_cache: Path | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(root), RNNJAX_TEST_JAX_CACHE=str(jax_cache))
    env["JAX_COMPILATION_CACHE_DIR"] = str(jax_cache)
    if native_cache is not None:
        env["RNNJAX_CACHE"] = str(native_cache)
    return env


def build_native(root: Path, env: dict[str, str]) -> None:
    """Builds the copy's C++ libraries into the copy's cache; RuntimeError if one fails."""
    code = (
        "from rnnjax.kernels import fused_cpu; from rnnjax.analysis import _lanczos_cpu; "
        "import rnnjax, sys; "
        "assert rnnjax.__file__.startswith(sys.argv[1]), rnnjax.__file__; "
        "print(fused_cpu.build()); print(_lanczos_cpu.LIBRARY.build())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(root)], cwd=root, env=env, capture_output=True, text=True
    )
    built = run.stdout.split()
    if run.returncode != 0 or not all(b.startswith(env["RNNJAX_CACHE"]) for b in built):
        raise RuntimeError(f"building the mutated C++ failed: {run.stderr[-2000:]}")


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def run_pytest(root: Path, tests: tuple[str, ...], env: dict[str, str]) -> dict:
    """Runs the selection in the copy: status "passed", "failed", "error" or "timeout"."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        run = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "first_failure": None, "seconds": TIMEOUT_S, "tail": ""}
    seconds = round(time.monotonic() - start, 1)
    found = _FAILED.search(run.stdout)
    status = {0: "passed", 1: "failed"}.get(run.returncode, "error")
    return {
        "status": status,
        "first_failure": found.group(2) if found else None,
        "seconds": seconds,
        "tail": "" if status == "passed" else (run.stdout + run.stderr)[-1500:],
    }


def check_mutation(mutation: Mutation, work: Path, jax_cache: Path) -> dict:
    """Copies, mutates, (re)builds if native, runs the selection; the record of the outcome."""
    root = copy_repository(work / mutation.name.replace(".", "_"))
    apply(mutation, root)
    native_cache = root / ".native-cache" if mutation.native else None
    # the native kernel's executables are not shared with other runs' compilation cache
    cache = root / ".jax-cache" if mutation.native else jax_cache
    env = _environment(root, cache, native_cache)
    if mutation.native:
        build_native(root, env)
    result = run_pytest(root, mutation.tests, env)
    shutil.rmtree(root, ignore_errors=True)
    verdict = {"failed": "killed", "passed": "survived"}.get(result["status"], result["status"])
    return {
        **dataclasses.asdict(mutation),
        "tests": list(mutation.tests),
        "verdict": verdict,
        **result,
    }


def check_baseline(mutations: list[Mutation], work: Path, jax_cache: Path) -> dict:
    """Every selection on an unmutated copy; RuntimeError if any of them fails."""
    root = copy_repository(work / "baseline")
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    result = run_pytest(root, tests, _environment(root, jax_cache, None))
    shutil.rmtree(root, ignore_errors=True)
    if result["status"] != "passed":
        raise RuntimeError(f"the selections fail without any mutation:\n{result['tail']}")
    return {"tests": len(tests), "seconds": result["seconds"]}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def table(records: list[dict]) -> str:
    """The markdown table of the outcomes."""
    lines = [
        "| mutation | file | meaning | verdict | first failing test | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        test = r["first_failure"] or "—"
        lines.append(
            f"| `{r['name']}` | `{r['path']}` | {r['meaning']} | **{r['verdict']}** "
            f"| `{test}` | {r['seconds']} |"
        )
    return "\n".join(lines)


def write_results(records: list[dict], baseline: dict, command: str, seconds: float) -> None:
    killed = sum(r["verdict"] == "killed" for r in records)
    summary = {
        "command": command,
        "mutations": len(records),
        "killed": killed,
        "survived": sum(r["verdict"] == "survived" for r in records),
        "other": len(records) - killed - sum(r["verdict"] == "survived" for r in records),
        "baseline": baseline,
        "seconds": round(seconds, 1),
        "records": [{k: v for k, v in r.items() if k != "tail"} for r in records],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = [
        "# Mutation check: one sign changed per cell's maths and per hand-written backward",
        "",
        f"Command: `{command}` (from the repository root; {summary['seconds']} s in all).",
        "",
        "Each mutation edits one snippet in a copy of the repository and runs the named pytest "
        "selection there (`-x`); **killed** means a test failed. Every selection was first "
        f"run unmutated and passed ({baseline['tests']} tests, {baseline['seconds']} s).",
        "",
        f"**{killed} of {len(records)} mutations killed**, {summary['survived']} survived, "
        f"{summary['other']} other.",
        "",
        table(records),
        "",
    ]
    (RESULTS / "mutation_check.md").write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run this mutation only")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--no-write", action="store_true", help="do not write the results")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = parser.parse_args(argv)
    names = {m.name for m in MUTATIONS}
    unknown = [n for n in args.only if n not in names]
    if unknown:
        print(f"error: unknown mutation {unknown[0]!r}; see --list", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.path}: {m.meaning}")
        return 0
    for m in chosen:  # fail before any work if a snippet went stale
        if occurrences(m) != 1:
            raise ValueError(f"{m.name}: snippet occurs {occurrences(m)} times in {m.path}")
    start = time.monotonic()
    records = []
    with tempfile.TemporaryDirectory(prefix="rnnjax-mutation-") as tmp:
        work = Path(tmp)
        jax_cache = work / "jax-cache"
        baseline = {"tests": 0, "seconds": 0.0}
        if not args.no_baseline:
            baseline = check_baseline(chosen, work, jax_cache)
            print(f"baseline: {baseline['tests']} tests pass unmutated ({baseline['seconds']} s)")
        for m in chosen:
            record = check_mutation(m, work, jax_cache)
            records.append(record)
            print(
                f"{m.name:42s} {record['verdict']:9s} {record['seconds']:6.1f} s  "
                f"{record['first_failure'] or ''}",
                flush=True,
            )
            if record["verdict"] not in ("killed", "survived"):
                print(record["tail"], file=sys.stderr)
    print()
    print(table(records))
    if not (args.no_write or args.only):
        command = "PYTHONPATH=$PWD nice -n 19 python benchmarks/mutation_check.py"
        write_results(records, baseline, command, time.monotonic() - start)
    return 0 if all(r["verdict"] == "killed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
