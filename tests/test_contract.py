"""The cell contract around the backends: dtypes, mismatched objects, NaN padding, vmap, and
the support predicates that ``auto`` reads."""

import functools
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES, random_like

import rnnjax as rj
from rnnjax.kernels import BACKENDS, Backend, Problem, auto, choose_backend
from rnnjax.kernels.base import YES

B, T, D, H = 3, 6, 4, 5
FAST = ["scan", "fused", "fused_cpu", "auto"]
DERIVED = [*FAST, "pallas", "pallas_verified"]
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="fused_cpu builds with g++")


def supported(cell, backend, batch=B, dtype=jnp.float32, platform="cpu"):
    return BACKENDS[backend].supports(cell, Problem(T, batch, jnp.dtype(dtype), platform))


# ---------------------------------------------------------------------------------------------
# dtypes: carries and outputs follow jnp.result_type(xs, params)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["scan", "fused", "auto"])
def test_float64_under_x64(backend):
    with jax.enable_x64(True):
        cell = rj.lstm(H, peephole=True)
        params = cell.init(jax.random.key(0), D)  # float32 params
        xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
        carry, ys = rj.unroll(cell, params, xs, backend=backend)
        assert ys.dtype == jnp.float64 and carry.c.dtype == jnp.float64
        p64 = rj.lstm(H, param_dtype=jnp.float64).init(jax.random.key(0), D)
        assert p64.W.dtype == jnp.float64
        g = jax.grad(lambda p: rj.unroll(cell, p, xs, backend=backend)[1].sum())(params)
        assert g.W.dtype == jnp.float32  # gradients have the params' dtype


@pytest.mark.parametrize("backend", ["scan", "fused", "auto"])
@pytest.mark.parametrize("factory", [rj.lstm, rj.gru, rj.simple_rnn])
def test_bfloat16_params_and_inputs(factory, backend):
    cell = factory(H, param_dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), D)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    xs = jax.random.normal(jax.random.key(1), (B, T, D)).astype(jnp.bfloat16)
    carry, ys = rj.unroll(cell, params, xs, backend=backend)
    assert ys.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(carry))
    # float32 inputs promote: result_type(bfloat16 params, float32 xs) = float32
    _, ys32 = rj.unroll(cell, params, xs.astype(jnp.float32), backend=backend)
    assert ys32.dtype == jnp.float32
    np.testing.assert_allclose(ys.astype(jnp.float32), ys32, atol=0.05)


# ---------------------------------------------------------------------------------------------
# mismatched objects: ValueErrors that name both sides
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "params_of", "match"),
    [
        (rj.lstm(H), rj.gru(H), "GRUParams"),
        (rj.lstm(16), rj.lstm(32), r"W=\(32, 128\)"),
        (rj.lstm(H, peephole=True), rj.lstm(H), "p_i=None"),
        (rj.lstm(H), rj.lstm(H, peephole=True), r"p_i=\(5,\)"),
        (rj.lstm(H, coupled=True), rj.lstm(H), r"U=\(4, 15\)"),
    ],
    ids=["gru_into_lstm", "H32_into_H16", "plain_into_peephole", "peephole_into_plain", "coupled"],
)
def test_mismatched_params_are_refused_everywhere(cell, params_of, match):
    params = params_of.init(jax.random.key(0), D)
    xs = jnp.ones((B, T, D))
    with pytest.raises(ValueError, match=match):
        rj.unroll(cell, params, xs)
    with pytest.raises(ValueError, match="params do not fit"):
        cell.step(params, cell.initial_carry(cell.init(jax.random.key(0), D), (B,)), xs[:, 0])
    layer = rj.stacked([cell])
    with pytest.raises(ValueError, match="params do not fit"):
        layer.apply([params], xs)


def test_step_checks_its_input_and_carry():
    cell = rj.gru(H)
    params = cell.init(jax.random.key(0), D)
    carry = cell.initial_carry(params, (B,))
    with pytest.raises(ValueError, match="x_t has 3 features"):
        cell.step(params, carry, jnp.ones((B, 3)))
    with pytest.raises(ValueError, match="carry"):
        cell.step(params, rj.LSTMCarry(carry.h, carry.h), jnp.ones((B, D)))
    with pytest.raises(ValueError, match="for batch shape"):
        cell.step(params, carry, jnp.ones((B + 1, D)))
    _, y = cell.step(params, carry, jnp.ones((B, D)))
    assert y.shape == (B, H)


def test_unsupported_explicit_backend_gives_the_reason():
    cell = rj.gru(H, reset_after=False)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="only a recur function"):
        rj.unroll(cell, params, jnp.ones((B, T, D)), backend="fused")
    with pytest.raises(ValueError, match="remat=True"):
        rj.unroll(
            rj.lstm(H),
            rj.lstm(H).init(jax.random.key(0), D),
            jnp.ones((B, T, D)),
            backend="fused",
            remat=True,
        )


# ---------------------------------------------------------------------------------------------
# padding: NaN or inf in the padded steps changes neither the outputs nor any gradient
# ---------------------------------------------------------------------------------------------


def _available(backends, cell):
    return [b for b in backends if supported(cell, b)]


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn", "lstm_peephole"])
@pytest.mark.parametrize("reverse", [False, True])
def test_non_finite_padding_is_ignored_by_every_backend(name, reverse, rng):
    cell = CELL_FACTORIES[name](H)
    k_p, k_x = jax.random.split(rng)
    params = random_like(k_p, cell.init(k_p, D))
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jnp.array([T, 3, 0])
    poisoned = xs.at[1, 3:].set(jnp.nan).at[2].set(jnp.inf)

    def loss(p, x, backend):
        carry, ys = rj.unroll(cell, p, x, lengths=lengths, reverse=reverse, backend=backend)
        return jnp.sum(ys**2) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(carry))

    # the Pallas interpreter is slow: one cell and direction there, every cell elsewhere
    backends = DERIVED if (name, reverse) == ("lstm", False) else FAST
    for backend in _available(backends, cell):
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
        (v_clean, g_clean), (v, g) = grad(params, xs, backend), grad(params, poisoned, backend)
        chex.assert_tree_all_finite((v, g))
        chex.assert_trees_all_close((v, g[0]), (v_clean, g_clean[0]), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(g[1][1, 3:], 0.0)  # no gradient reaches the padding


# ---------------------------------------------------------------------------------------------
# vmap over inputs and over params, for every backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [*DERIVED, "associative"])
def test_vmap_over_inputs_and_params(backend, rng):
    cell = rj.min_gru(H) if backend == "associative" else rj.lstm(H)
    if backend in ("fused_cpu",) and not supported(cell, backend, batch=1):
        pytest.skip(supported(cell, backend, batch=1).reason)
    k_p, k_x = jax.random.split(rng)
    params = random_like(k_p, cell.init(k_p, D))
    xs = jax.random.normal(k_x, (4, 2, T, D))  # 4 mapped examples of batch 2 (small: B <= 4)
    run = lambda p, x: rj.unroll(cell, p, x, backend=backend)[1]  # noqa: E731
    want = jnp.stack([run(params, x) for x in xs])
    chex.assert_trees_all_close(jax.vmap(run, (None, 0))(params, xs), want, atol=1e-5)
    ensemble = jax.tree.map(lambda p: jnp.stack([p, 0.5 * p]), params)
    members = [jax.tree.map(lambda e, i=i: e[i], ensemble) for i in range(2)]
    want = jnp.stack([run(member, xs[0]) for member in members])
    chex.assert_trees_all_close(jax.vmap(run, (0, None))(ensemble, xs[0]), want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# auto reads pure predicates and reports errors instead of skipping a backend
# ---------------------------------------------------------------------------------------------


def test_predicates_do_not_trace(monkeypatch):
    def no_tracing(*args, **kwargs):
        raise AssertionError("a support predicate traced something")

    monkeypatch.setattr(jax, "eval_shape", no_tracing)
    monkeypatch.setattr(jax, "make_jaxpr", no_tracing)
    for name, make in CELL_FACTORIES.items():
        for backend in BACKENDS.values():
            answer = backend.supports(make(H), Problem(T, 1, jnp.dtype("float32"), "cpu"))
            assert answer.ok or answer.reason, (name, backend.name)


def test_auto_reports_a_failing_backend_instead_of_skipping_it(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a genuine bug in a fast backend")

    monkeypatch.setitem(BACKENDS, "broken", Backend("broken", broken, lambda c, p: YES, ""))
    monkeypatch.setitem(auto.TABLE, "cpu", (auto.Rule("broken"), auto.Rule("scan")))
    cell = rj.lstm(H)
    assert choose_backend(cell, B, T, "cpu") == ("broken", 1)
    with pytest.raises(RuntimeError, match="genuine bug"):
        rj.unroll(cell, cell.init(jax.random.key(0), D), jnp.ones((B, T, D)), backend="auto")


@needs_gxx
def test_fused_cpu_specialisation_equals_the_generic_fused_loop(rng):
    for cell in (rj.lstm(H), rj.gru(H)):
        assert supported(cell, "fused_cpu", batch=2)
        k_p, k_x = jax.random.split(rng)
        params = random_like(k_p, cell.init(k_p, D))
        xs = jax.random.normal(k_x, (2, T, D))

        def loss(p, x, backend, cell=cell):
            carry, ys = rj.unroll(cell, p, x, lengths=jnp.array([T, 2]), backend=backend)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jax.tree.leaves(carry)[0])

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
        chex.assert_trees_all_close(
            grad(params, xs, "fused_cpu"), grad(params, xs, "fused"), rtol=1e-5, atol=1e-6
        )


# ---------------------------------------------------------------------------------------------
# forward-mode autodiff: "auto" runs it on "scan"; the custom_vjp backends refuse it by name
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, dict(chunk=2), dict(lengths=jnp.array([T, 2, 0]))])
def test_auto_runs_forward_mode_autodiff_on_scan(options, rng):
    cell = rj.lstm(H)
    params = random_like(rng, cell.init(rng, D))
    xs = jax.random.normal(jax.random.fold_in(rng, 1), (B, T, D))

    def outputs(x, backend="auto"):
        return rj.unroll(cell, params, x, backend=backend, **options)[1]

    want = jax.jacrev(functools.partial(outputs, backend="scan"))(xs)
    chex.assert_trees_all_close(jax.jacfwd(outputs)(xs), want, rtol=1e-5, atol=1e-6)
    hessian = jax.hessian(lambda x: jnp.sum(jnp.sin(outputs(x))))(xs)
    assert hessian.shape == (B, T, D, B, T, D) and bool(jnp.all(jnp.isfinite(hessian)))
    # reverse mode keeps the fast backend: the same program as naming the table's choice
    name, unroll = choose_backend(cell, B, options.get("chunk", T))
    assert name != "scan"

    def program(**how):
        def loss(x):
            return jnp.sum(rj.unroll(cell, params, x, **options, **how)[1])

        return str(jax.make_jaxpr(jax.grad(loss))(xs))

    assert program() == program(backend=name, unroll=unroll)


@pytest.mark.parametrize("backend", ["fused", "fused_cpu", "associative"])
def test_custom_vjp_backends_refuse_forward_mode_with_the_reason(backend, rng):
    cell = rj.diagonal_linear_rnn(H) if backend == "associative" else rj.lstm(H)
    params = cell.init(rng, D)
    xs = jnp.ones((B, T, D))
    with pytest.raises(ValueError, match=f"backend='{backend}' is a custom_vjp.*backend='scan'"):
        jax.jvp(lambda x: rj.unroll(cell, params, x, backend=backend)[1], (xs,), (xs,))
