"""The long-range tasks: structure as the papers define it, determinism, baselines, criteria."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.data import TASKS, make_task


def host(batch):
    return jax.tree.map(np.asarray, batch)


@pytest.mark.parametrize("name", TASKS)
def test_shapes_determinism_and_jit(name):
    task = make_task(name, T=20)
    # traced step (as inside a train step) for one task; the generator itself is jitted
    batch_fn = jax.jit(lambda step: task.batch(7, step, 6)) if name == "adding" else None
    a = task.batch(7, 3, 6) if batch_fn is None else batch_fn(3)
    b, c = task.batch(7, 3, 6), task.batch(7, 4, 6)
    chex.assert_shape(a.xs, (6, task.length, task.input_size))
    assert a.xs.dtype == jnp.float32 and a.lengths.dtype == jnp.int32
    chex.assert_trees_all_equal(a, b)  # a pure function of (seed, step); traced == eager
    assert not np.array_equal(a.xs, c.xs)
    chex.assert_trees_all_equal(a, task.batch(jax.random.key(7), 3, 6))  # int seed == its key
    test = task.test_batch(7, 0, 6)
    assert not np.array_equal(test.xs, a.xs)  # the test stream is not a training batch
    lengths = np.asarray(a.lengths)
    assert lengths.min() >= task.T and lengths.max() <= task.length
    if task.readout == "all":
        chex.assert_shape(a.targets, (6, task.length))
    else:
        chex.assert_shape(a.targets, (6,))


def test_adding_hochreiter_structure():
    T = 40
    b = host(make_task("adding", T).batch(1, 0, 256))
    values, markers = b.xs[..., 0], b.xs[..., 1]
    assert b.xs.shape[1] == T + T // 10
    for i in range(256):
        n = b.lengths[i]
        assert T <= n <= T + T // 10
        assert np.all(b.xs[i, n:] == 0)  # padding
        marked = np.flatnonzero(markers[i, :n] == 1)
        assert len(marked) == 2
        p1, p2 = marked  # p1 < p2
        assert p1 < 10 and p2 <= T // 2 - 1  # X₁ among the first 10, X₂ in the first T/2 − 1
        assert markers[i, n - 1] == -1
        assert markers[i, 0] == (1 if p1 == 0 else -1)
        assert np.sum(markers[i, :n] == -1) == (1 if p1 == 0 else 2)
        if p1 == 0:
            assert values[i, 0] == 0  # "we set X₁ to zero"
        want = 0.5 + (values[i, p1] + values[i, p2]) / 4
        np.testing.assert_allclose(b.targets[i], want, rtol=1e-6)
    assert np.all(np.abs(values) <= 1)
    assert len(set(b.lengths.tolist())) > 1  # lengths vary


@pytest.mark.parametrize("name", ["adding", "multiplication"])
def test_pascanu_marked_pair_structure(name):
    T = 50
    definition = "pascanu" if name == "adding" else None
    b = host(make_task(name, T, definition).batch(2, 5, 128))
    markers, values = b.xs[..., 0], b.xs[..., 1]
    for i in range(128):
        n = b.lengths[i]
        assert T <= n < T + T // 10
        p0, p1 = np.flatnonzero(markers[i])
        assert p0 < int(0.1 * n) <= p1 < int(0.1 * n) + int(0.4 * n)
        x0, x1 = values[i, p0], values[i, p1]
        want = (x0 + x1) / 2 if name == "adding" else x0 * x1
        np.testing.assert_allclose(b.targets[i], want, rtol=1e-6)
    assert values.min() >= 0 and values.max() <= 1


@pytest.mark.parametrize(
    "name,starts", [("temporal_order", (0.1, 0.5)), ("temporal_order_3bit", (0.1, 0.3, 0.6))]
)
def test_temporal_order_structure(name, starts):
    T = 60
    b = host(make_task(name, T).batch(3, 0, 128))
    symbols = b.xs.argmax(-1)  # (B, T)
    assert np.all(b.xs.sum(-1) == 1)  # one-hot
    for i in range(128):
        pos = np.flatnonzero(symbols[i] < 2)  # A or B
        assert len(pos) == len(starts)
        for p, s in zip(pos, starts, strict=True):
            assert int(s * T) <= p < int(s * T) + int(0.1 * T)
        bits = symbols[i, pos]
        assert b.targets[i] == sum(int(v) << j for j, v in enumerate(bits))


def test_permutation_structure():
    b = host(make_task("permutation", 30).batch(0, 1, 64))
    symbols = b.xs.argmax(-1)
    np.testing.assert_array_equal(symbols[:, 0], b.targets)
    assert set(b.targets.tolist()) <= {0, 1}
    assert symbols[:, 1:].min() >= 2 and symbols[:, 1:].max() <= 99


@pytest.mark.parametrize("name,values,delimiter", [("memorisation", 5, 30), ("copy", 8, 29)])
def test_recall_structure(name, values, delimiter):
    T = 20
    task = make_task(name, T)
    b = host(task.batch(0, 0, 16))
    inputs = b.xs.argmax(-1)
    blank = values
    assert task.length == T + 20 and task.output_size == values + 1
    pattern = inputs[:, :10]
    assert pattern.max() < values
    assert np.all(inputs[:, delimiter] == values + 1)
    rest = np.delete(inputs[:, 10:], delimiter - 10, axis=1)
    assert np.all(rest == blank)
    assert np.all(b.targets[:, :-10] == blank)
    np.testing.assert_array_equal(b.targets[:, -10:], pattern)


def test_regression_baselines_are_constant_predictor_mse():
    for name, definition in [("adding", None), ("adding", "pascanu"), ("multiplication", None)]:
        task = make_task(name, 20, definition)
        targets = np.asarray(task.batch(0, 0, 20_000).targets, np.float64)
        np.testing.assert_allclose(np.var(targets), task.baseline, rtol=0.03)


def test_classification_baselines():
    assert make_task("temporal_order", 20).baseline == pytest.approx(math.log(4))
    assert make_task("temporal_order_3bit", 20).baseline == pytest.approx(math.log(8))
    assert make_task("permutation", 20).baseline == pytest.approx(math.log(2))
    # 10·log 8 / (T + 20) (Arjovsky et al.): 0.1733 at T = 100, 0.0400 at T = 500. (At T = 200
    # the formula gives 0.0945; the 0.1040 quoted beside it equals 10·log 8 / T instead.)
    for T, want in [(100, 0.1733), (200, 0.0945), (500, 0.0400)]:
        assert make_task("copy", T).baseline == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("name", ["copy", "memorisation", "temporal_order"])
def test_memoryless_predictor_scores_the_baseline(name):
    """Blanks predicted exactly, uniform guesses wherever memory is needed: loss = baseline."""
    task = make_task(name, 20)
    b = task.batch(0, 0, 32)
    K = task.output_size
    loss_and_correct = jax.jit(lambda y, b: (task.loss(y, b), task.correct(y, b)))
    if task.readout == "all":
        n_values = K - 1
        is_blank = (b.targets == n_values)[..., None]  # (B, L, 1)
        guess = jnp.where(jnp.arange(K) < n_values, 1.0 / n_values, 0.0)  # (K,)
        probs = jnp.where(is_blank, jax.nn.one_hot(n_values, K), guess[None, None, :])
    else:
        probs = jnp.full((32, K), 1.0 / K)
    loss, correct = loss_and_correct(jnp.log(probs), b)
    np.testing.assert_allclose(loss, task.baseline, rtol=1e-5)
    assert task.readout == "last" or not np.any(correct)


def test_success_criteria():
    def check(task, offset):  # which sequences are correct when off by ``offset``
        b = task.batch(0, 0, 8)
        return np.asarray(jax.jit(task.correct)(b.targets[:, None] + offset, b))

    hochreiter, pascanu = make_task("adding", 20), make_task("adding", 20, "pascanu")
    assert check(hochreiter, 0.0).all() and check(hochreiter, 0.039).all()
    assert not check(hochreiter, 0.041).any()  # |error| < 0.04 (H&S)
    assert check(pascanu, 0.19).all()  # squared error 0.036 <= 0.04 (Pascanu's code)
    assert not check(pascanu, 0.21).any()
    copy = make_task("copy", 10)
    b = copy.batch(0, 0, 4)
    perfect = np.log(np.eye(copy.output_size)[np.asarray(b.targets)] + 1e-9)  # (4, L, K)
    wrong = perfect.copy()
    wrong[0, -1] = perfect[0, -1, ::-1]  # one wrong symbol in sequence 0
    correct = jax.jit(copy.correct)
    assert np.all(correct(perfect, b))
    np.testing.assert_array_equal(correct(wrong, b), [False, True, True, True])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="nope", T=20), "unknown task"),
        (dict(name="adding", T=0), "T must be"),
        (dict(name="adding", T=5), "T must be"),
        (dict(name="copy", T=20, definition="pascanu"), "adding task only"),
        (dict(name="adding", T=20, definition="other"), "unknown adding"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_task(**kwargs)
