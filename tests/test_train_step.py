"""The train step: learning, clipping statistics, Ω, non-finite skipping, truncated BPTT."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax.analysis import pascanu_regularizer
from rnnjax.data import make_task, prepare_text
from rnnjax.train import (
    Objective,
    build_cells,
    char_model,
    init_state,
    make_optimizer,
    make_train_step,
    task_model,
    task_objective,
    task_outputs,
    text_objective,
)
from rnnjax.train.step import omega_schedule

KEY = jax.random.key(0)  # the seed key a task run passes as the step's data


def _task_setup(cell="lstm", T=10, H=8, omega=None):
    task = make_task("adding", T)
    model = task_model(task, build_cells(cell, H))
    return task, model, task_objective(model, task, batch_size=16, omega_weight=omega)


def test_loss_decreases_on_adding():
    _, model, objective = _task_setup()
    optimizer = make_optimizer("adam", 1e-2, clip_norm=1.0)
    params = model.init(jax.random.key(0))
    state = init_state(params, optimizer, objective.initial_carry(params))
    step = jax.jit(make_train_step(objective, optimizer))
    losses = []
    for _ in range(80):
        state, metrics = step(state, KEY)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 80 and int(state.skipped) == 0
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_clipping_statistics_and_update_norm():
    """Pascanu's Algorithm 1: with SGD(lr=1) the update has norm min(‖g‖, threshold)."""
    _, model, objective = _task_setup()
    params = model.init(jax.random.key(1))
    norm = None
    for scale, fired in [(1e6, False), (0.1, True)]:  # threshold = scale · ‖g‖
        threshold = scale * (norm or 1.0)
        optimizer = make_optimizer("sgd", 1.0, clip_norm=threshold)
        state = init_state(params, optimizer, ())
        new, metrics = jax.jit(make_train_step(objective, optimizer))(state, KEY)
        norm = norm or float(metrics["grad_norm"])  # the pre-clip norm, from the first run
        delta = jax.tree.map(lambda a, b: a - b, new.params, params)
        np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
        assert float(metrics["clipped"]) == float(fired)
        np.testing.assert_allclose(optax.tree.norm(delta), min(norm, threshold), rtol=1e-5)


def test_non_finite_steps_are_skipped_and_latch():
    bad_steps = {2, 3} | set(range(6, 100))

    def loss(params, carry, data, step, key):
        bad = jnp.isin(step, jnp.asarray(sorted(bad_steps)))
        value = jnp.sum(params["w"] ** 2) * jnp.where(bad, jnp.nan, 1.0)
        return value, (carry, {"loss": value})

    objective = Objective(loss, lambda params: ())
    optimizer = make_optimizer("sgd", 0.1)
    state = init_state({"w": jnp.ones(3)}, optimizer, ())
    step = jax.jit(make_train_step(objective, optimizer, max_bad_steps=3))
    history = []
    for i in range(12):
        state, metrics = step(state, ())
        history.append((jax.device_get(state), float(metrics["finite"])))
        if i == 0:  # no clipping here: the norm of the gradient 2w is still reported
            np.testing.assert_allclose(metrics["grad_norm"], 2 * np.sqrt(3), rtol=1e-6)
            assert float(metrics["clipped"]) == 0.0
    w = [np.asarray(s.params["w"]) for s, _ in history]
    assert [f for _, f in history[:8]] == [1, 1, 0, 0, 1, 1, 0, 0]
    np.testing.assert_array_equal(w[2], w[1])  # skipped: unchanged
    np.testing.assert_array_equal(w[3], w[1])
    assert not np.array_equal(w[4], w[3])  # training goes on after a bad run < 3
    assert [int(s.skipped) for s, _ in history[:6]] == [0, 0, 1, 2, 2, 2]
    assert [int(s.bad_run) for s, _ in history[:6]] == [0, 0, 1, 2, 0, 0]
    # steps 6, 7, 8 are bad: three in a row, then the step is a no-op (latched)
    assert int(history[8][0].bad_run) == 3 and int(history[8][0].step) == 9
    chex.assert_trees_all_equal(history[11][0], history[8][0])
    assert np.all(np.isfinite(w[-1]))


def _text_setup(B=3, W=8, layers=1):
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefghij \n"), size=2000))
    data = prepare_text(text, batch_size=B, window=W)
    model = char_model(data.vocab.size, build_cells("lstm", 8, layers), embed_dim=5)
    n = int((data.train.shape[1] - 1) // W)
    return data, model, n


def test_tbptt_carry_flows_across_windows_and_restarts_each_epoch():
    B, W = 3, 8
    data, model, n = _text_setup(B, W)
    objective = text_objective(model, B, W, n)
    optimizer = optax.sgd(0.0)  # parameters stay fixed: only the carry moves
    params = model.init(jax.random.key(0))
    state = init_state(params, optimizer, objective.initial_carry(params))
    step = jax.jit(make_train_step(objective, optimizer))
    streams = jnp.asarray(data.train)
    for _k in range(3):
        state, _ = step(state, streams)
    want, _ = model.apply(params, streams[:, : 3 * W])  # one pass over 3 windows
    chex.assert_trees_all_close(state.carry, want, rtol=1e-5, atol=1e-6)
    while int(state.step) < n + 1:  # one epoch and one window: the carry restarted at zero
        state, _ = step(state, streams)
    want, _ = model.apply(params, streams[:, :W])
    chex.assert_trees_all_close(state.carry, want, rtol=1e-5, atol=1e-6)


def test_tbptt_gradient_stops_at_the_window_start():
    B, W = 3, 8
    data, model, n = _text_setup(B, W)
    objective = text_objective(model, B, W, n)
    params = model.init(jax.random.key(0))
    carry = jax.tree.map(lambda x: x + 0.3, objective.initial_carry(params))
    grad_carry = jax.grad(lambda c: objective.loss(params, c, data.train, jnp.int32(1), None)[0])
    for leaf in jax.tree.leaves(grad_carry(carry)):
        np.testing.assert_array_equal(leaf, 0.0)


def test_omega_is_added_with_its_schedule():
    weight = omega_schedule(2.0, decay=0.5)
    np.testing.assert_allclose(weight(jnp.int32(3)), 2.0 * 0.5**3)
    assert omega_schedule(0.0) is None
    task, model, objective = _task_setup("simple_rnn", H=6, omega=weight)
    _, _, plain = _task_setup("simple_rnn", H=6)
    params = model.init(jax.random.key(2))
    step = jnp.int32(1)
    value_and_grad = jax.value_and_grad(objective.loss, has_aux=True)
    (total, (_, metrics)), g_omega = jax.jit(value_and_grad)(params, (), KEY, step, None)
    batch = task.batch(0, 1, 16)

    def loss_of_outputs(ys):
        return task.loss(task_outputs(task, model.head(params, ys), batch), batch)

    omega = jax.jit(
        lambda p, xs: pascanu_regularizer(model.stack.cells[0], p, xs, loss_fn=loss_of_outputs)
    )(params.rnn[0], batch.xs)
    np.testing.assert_allclose(metrics["omega"], omega, rtol=1e-5)
    assert float(omega) > 0
    np.testing.assert_allclose(total, metrics["loss"] + 1.0 * omega, rtol=1e-5)
    g_plain = jax.jit(jax.grad(lambda p: plain.loss(p, (), KEY, step, None)[0]))(params)
    assert not np.allclose(g_omega.rnn[0].W, g_plain.rnn[0].W)
    np.testing.assert_allclose(g_omega.out.V, g_plain.out.V, rtol=1e-5)  # Ω: recurrent only


def test_omega_needs_one_layer_and_optimizer_checks():
    _data, model, n = _text_setup(layers=2)
    with pytest.raises(ValueError, match="one recurrent layer"):
        text_objective(model, 3, 8, n, omega_schedule(1.0))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", 1e-3)
    with pytest.raises(ValueError, match="learning rate"):
        make_optimizer("sgd", 0.0)
    with pytest.raises(ValueError, match="clip norm"):
        make_optimizer("sgd", 0.1, clip_norm=-1.0)
