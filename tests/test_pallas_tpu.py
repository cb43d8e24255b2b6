"""The ``"pallas_tpu"`` backend (Mosaic TPU kernels) equals ``"scan"``: outputs, final carry
and every gradient, run on CPU in Pallas's TPU interpret mode, and lowered through Mosaic TPU.

No TPU is needed: `jax.export` lowers the kernels for the "tpu" platform on any machine.
"""

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from conftest import CELL_FACTORIES
from test_pallas import check_backend, problem, rel_err

import rnnjax as rj
from rnnjax.kernels import BACKENDS, Problem, choose_backend
from rnnjax.kernels.pallas import family_of, persistent_rnn, persistent_rnn_reference
from rnnjax.kernels.pallas_tpu import PALLAS_TPU, TPU, make_tpu_backend, tpu_plan_or_reason


@pytest.fixture
def blocks_and_chunks(monkeypatch):
    """Blocks of 8 rows and chunks of 3 steps, so that small problems cross both."""
    backend = make_tpu_backend(name="pallas_tpu_small", block_rows=8, time_chunk=3)
    monkeypatch.setitem(BACKENDS, backend.name, backend)
    return backend.name


@pytest.mark.parametrize("name", ["lstm", "lstm_peephole", "gru", "simple_rnn"])
def test_equals_scan_with_lengths(rng, name):
    cell = CELL_FACTORIES[name](8)
    check_backend(cell, problem(rng, cell, B=3, T=4, D=4), backend="pallas_tpu")


def test_carry_crosses_time_chunks_and_batch_blocks(rng, blocks_and_chunks):
    """B=10 in two blocks of 8 rows, T=7 in three chunks of 3 (the last one padded)."""
    cell = rj.lstm(8)
    args = problem(rng, cell, B=10, T=7, D=3)
    jaxpr = jax.make_jaxpr(lambda p, x: rj.unroll(cell, p, x, backend=blocks_and_chunks))
    assert re.findall(r"grid=\(\d+, \d+\)", str(jaxpr(*args[:2]))) == ["grid=(2, 3)"]
    check_backend(cell, args, backend=blocks_and_chunks)


def test_reverse_without_lengths(rng):
    cell = rj.gru(8)
    params, xs, carry, _ = problem(rng, cell, B=2, T=4, D=3, lengths=False)
    check_backend(cell, (params, xs, carry, None), backend="pallas_tpu", reverse=True)


def test_bfloat16_compute(rng):
    cell = rj.lstm(8, dtype=jnp.bfloat16)
    check_backend(cell, problem(rng, cell, B=2, T=4, D=4), backend="pallas_tpu", tol=1e-2)


def _kernel_problem(rng, plan_interpret: bool):
    family, _ = family_of(rj.gru(16), rj.gru(16).init(rng, input_size=2))
    plan = tpu_plan_or_reason(family, 5, 8, 16, interpret=plan_interpret, time_chunk=2)
    assert not isinstance(plan, str)
    k = jax.random.split(rng, 5)
    px = jax.random.normal(k[0], (5, 8, 3 * 128))  # (T, Bp, K·Hp)
    w = 0.1 * jax.random.normal(k[1], (128, 3 * 128))  # (Hp, K·Hp)
    h0 = jax.random.normal(k[2], (8, 128))  # (Bp, Hp)
    pv = jax.random.normal(k[3], (1, 128))  # (P, Hp)
    lens = jax.random.randint(k[4], (8,), 0, 6)

    def value_and_grad(fn):
        def f(px, w, h0, pv):
            hseq, _ = fn(plan, px, w, (h0,), pv, lens)
            return jnp.sum(jnp.tanh(hseq) * jnp.arange(128.0)[None, None, :]), hseq

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))

    return value_and_grad, (px, w, h0, pv)


def test_kernel_equals_its_reference(rng):
    """`persistent_rnn` with the TPU kernels against the lax.scan reference's autodiff."""
    value_and_grad, args = _kernel_problem(rng, plan_interpret=True)
    (_, h_k), g_k = value_and_grad(functools.partial(persistent_rnn, TPU))(*args)
    (_, h_r), g_r = value_and_grad(persistent_rnn_reference)(*args)
    assert rel_err(h_k, h_r) <= 1e-5
    assert rel_err(g_k, g_r) <= 1e-5


def test_kernels_lower_through_mosaic_tpu(rng):
    """The compiled (not interpreted) kernels, forward and backward, lower for a TPU."""
    value_and_grad, args = _kernel_problem(rng, plan_interpret=False)
    exported = jax.export.export(
        value_and_grad(functools.partial(persistent_rnn, TPU)), platforms=["tpu"]
    )(*args)
    module = exported.mlir_module()
    assert module.count("tpu_custom_call") == 2, "one forward and one backward kernel"
    assert "persistent_gru_fwd_tpu" in module and "persistent_gru_bwd_tpu" in module


def test_auto_picks_it_on_tpu():
    assert choose_backend(rj.lstm(256), batch=32, steps=100, platform="tpu") == ("pallas_tpu", 1)
    assert choose_backend(rj.gru(512), batch=128, steps=50, platform="tpu")[0] == "pallas_tpu"
    cell = rj.layer_norm_lstm(16)  # its pointwise mixes units: the fused loop
    assert choose_backend(cell, batch=4, steps=10, platform="tpu")[0] == "fused"


def test_refusals_name_the_reason():
    f32 = jnp.dtype("float32")
    on_gpu = PALLAS_TPU.supports(rj.lstm(8), Problem(3, 2, f32, "gpu"))
    assert not on_gpu and "TPU (Mosaic) kernels only" in on_gpu.reason
    too_big = PALLAS_TPU.supports(rj.lstm(4096), Problem(3, 2, f32, "tpu"))
    assert not too_big and "MiB" in too_big.reason and "H=4096" in too_big.reason
    cell = rj.multiplicative_rnn(8, factors=3)
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="backend='pallas_tpu'"):
        rj.unroll(cell, params, jnp.ones((2, 3, 3)), backend="pallas_tpu")
