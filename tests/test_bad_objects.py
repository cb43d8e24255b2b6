"""Mismatched or out-of-range objects give a ValueError naming both sides, never an internal
error or a silent wrong number: interop, embedding ids, loss targets, and the analysis report
on non-finite, empty or ragged inputs."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import rnnjax as rj
from rnnjax.analysis import diagnose, pascanu_bound
from rnnjax.interop import from_flax, from_torch

D, H = 3, 4


@pytest.fixture(scope="module")
def torch_lstm():
    torch = pytest.importorskip("torch")  # the other tests run without it
    torch.manual_seed(0)
    return torch.nn.LSTM(D, H, batch_first=True)


@pytest.fixture(scope="module")
def flax_gru():
    cell = nn.GRUCell(H)
    x = jnp.zeros((1, D))
    return cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(1), x.shape), x)


@pytest.mark.parametrize(
    "cell,match",
    [
        (rj.gru(H), r"nn\.LSTM layer .* cell is gru, which has 3 gate blocks"),
        (rj.simple_rnn(H), r"nn\.LSTM layer .* cell is simple_rnn, which has 1 gate block"),
        (rj.lstm(2 * H), rf"hidden size H={H} .* hidden_size={2 * H}"),
    ],
)
def test_from_torch_names_both_sides_of_a_mismatch(torch_lstm, cell, match):
    with pytest.raises(ValueError, match=match):
        from_torch(cell, torch_lstm.state_dict())


def test_from_torch_refuses_the_module_itself(torch_lstm):
    with pytest.raises(ValueError, match=r"got a LSTM module: pass its \.state_dict\(\)"):
        from_torch(rj.lstm(H), torch_lstm)
    params = from_torch(rj.lstm(H), torch_lstm.state_dict())  # the right call still works
    assert params.W.shape == (H, 4 * H)


def test_from_flax_names_both_sides_of_a_mismatch(flax_gru):
    with pytest.raises(ValueError, match=r"flax params hold a GRUCell .* the cell is lstm"):
        from_flax(rj.lstm(H), flax_gru)
    with pytest.raises(ValueError, match=rf"hidden size H={H} .* hidden_size={H + 1}"):
        from_flax(rj.gru(H + 1), flax_gru)
    with pytest.raises(ValueError, match="needs the cell's variables"):
        from_flax(rj.gru(H), nn.GRUCell(H))
    assert from_flax(rj.gru(H), flax_gru).W.shape == (H, 3 * H)


def test_embedding_ids_outside_the_vocabulary():
    emb = rj.embedding(5, 2)
    params = emb.init(jax.random.key(0))
    for bad in ([-1, 2], [0, 5]):  # -1 must not silently read the last row
        with pytest.raises(ValueError, match=r"tokens must be in \[0, 5\)"):
            emb.apply(params, jnp.array(bad))
    # under jit the ids cannot be checked: an id outside [0, V) embeds to zeros, never NaN
    # and never another token's row, and sends no gradient to E
    tokens = jnp.array([[-1, 2, 7]])
    out = jax.jit(emb.apply)(params, tokens)
    np.testing.assert_array_equal(out[0, 0], 0.0)
    np.testing.assert_array_equal(out[0, 2], 0.0)
    np.testing.assert_array_equal(out[0, 1], params.E[2])
    grad = jax.grad(lambda p: jax.jit(emb.apply)(p, tokens).sum())(params).E
    np.testing.assert_array_equal(grad, np.eye(5)[[2]].T @ np.ones((1, 2)))


def test_embedding_pad_id_is_a_zero_vector_without_gradient():
    emb = rj.embedding(5, 2, pad_id=-1)
    params = emb.init(jax.random.key(0))
    tokens = jnp.array([[3, -1, -1]])
    out = emb.apply(params, tokens)  # accepted eagerly
    np.testing.assert_array_equal(out[0, 1:], 0.0)
    np.testing.assert_array_equal(out[0, 0], params.E[3])
    zero_pad = rj.embedding(5, 2, pad_id=0)
    np.testing.assert_array_equal(zero_pad.apply(params, jnp.array([0])), 0.0)
    grad = jax.grad(lambda p: zero_pad.apply(p, jnp.array([0, 1])).sum())(params).E
    np.testing.assert_array_equal(grad[0], 0.0)
    with pytest.raises(ValueError, match="pad_id must be an int"):
        rj.embedding(5, 2, pad_id=1.0)


def test_cross_entropy_targets_outside_the_classes():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 4))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 4\).*values -1, 4"):
        rj.sequence_cross_entropy(logits, jnp.array([[0, 1, 4], [0, 0, -1]]))
    # padded steps (mask False) may hold anything, even NaN logits: never in value or gradient
    targets = jnp.array([[0, 1, 3], [0, 2, -1]])
    mask = jnp.array([[True, True, True], [True, True, False]])
    poisoned = logits.at[1, 2].set(jnp.nan)
    want = rj.sequence_cross_entropy(logits[:, :2], targets[:, :2]) * 4 / 5 + (
        -jax.nn.log_softmax(logits[0, 2])[3] / 5
    )
    for fn in (rj.sequence_cross_entropy, jax.jit(rj.sequence_cross_entropy)):
        np.testing.assert_allclose(fn(poisoned, targets, mask), want, rtol=1e-6)
        grad = jax.grad(fn)(poisoned, targets, mask)
        assert np.isfinite(grad).all() and (grad[1, 2] == 0).all()
    # under jit an out-of-range target at a counted step makes the loss NaN: never plausible
    assert math.isnan(jax.jit(rj.sequence_cross_entropy)(logits, targets))


def _simple(H=8, D=3, B=3, T=12, seed=0):
    cell = rj.simple_rnn(H)
    k_p, k_x = jax.random.split(jax.random.key(seed))
    return cell, cell.init(k_p, D), jax.random.normal(k_x, (B, T, D))


def test_diagnose_on_non_finite_inputs_says_so():
    cell, params, xs = _simple()
    report = diagnose(cell, params, xs.at[1, 4, 0].set(jnp.nan), lyapunov_k=2)
    assert report.regime == "non-finite"
    assert report.verdict.startswith("non-finite: xs holds 1 NaN/inf values")
    bad_params = params._replace(W=params.W.at[0, 0].set(jnp.inf))
    report = diagnose(cell, bad_params, xs, lyapunov_k=0, contributions=False)
    assert report.regime == "non-finite" and "params hold 1 NaN/inf" in report.verdict
    assert "healthy" not in report.verdict


def test_diagnose_refuses_an_empty_batch():
    cell, params, xs = _simple()
    with pytest.raises(ValueError, match="B=0"):
        diagnose(cell, params, xs[:0])


def test_diagnose_with_lengths_measures_each_example_over_its_own_steps():
    """Oracle: each example diagnosed alone on xs[:L]; the ragged report pads the backward
    norms with ‖I‖ and the forward norms with their last value (the carry is held)."""
    cell = rj.lstm(5)
    k_p, k_x = jax.random.split(jax.random.key(3))
    params = cell.init(k_p, 3)
    xs = jax.random.normal(k_x, (3, 10, 3))
    lengths = jnp.array([10, 6, 3])
    garbage = xs.at[1, 6:].set(jnp.nan).at[2, 3:].set(1e30)  # padding is never read
    report = diagnose(cell, params, garbage, lengths=lengths, lyapunov_k=2, transient=0)
    assert report.regime != "non-finite"
    for b, L in enumerate(np.asarray(lengths)):
        alone = diagnose(cell, params, xs[b : b + 1, :L], lyapunov_k=0, contributions=False)
        back = np.concatenate([alone.log10_backward[0], np.zeros(10 - L)])  # ‖I‖_2 = 1
        fwd = np.concatenate(
            [alone.log10_forward[0], np.repeat(alone.log10_forward[0, -1], 10 - L)]
        )
        np.testing.assert_allclose(report.log10_backward[b], back, atol=2e-4)
        np.testing.assert_allclose(report.log10_forward[b], fwd, atol=2e-4)
        grads = report.log10_loss_grad[b]
        assert np.isneginf(grads[L + 1 :]).all() and np.isfinite(grads[: L + 1]).all()
    assert report.lyapunov is not None and np.isfinite(report.lyapunov).all()
    assert "lengths 3..10" in report.verdict
    for bad, match in [
        (jnp.array([10, 0, 3]), r"\[1, T\]"),
        (jnp.array([10, 11, 3]), r"\[1, T\]"),
        (jnp.array([10, 3]), "shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            diagnose(cell, params, xs, lengths=bad)


def test_pascanu_bound_of_an_orthogonal_matrix_is_the_boundary():
    cell = rj.simple_rnn(64)  # orthogonal W: σ_max = 1 up to float32 rounding
    params = cell.init(jax.random.key(0), 4)
    sigma = np.linalg.norm(np.asarray(params.W, np.float64), 2)
    assert sigma != 1.0  # the rounding this test is about
    bound = pascanu_bound(cell, params)
    assert bound.verdict == "boundary", bound.explanation
    scaled = params._replace(W=params.W * 1.001)
    assert pascanu_bound(cell, scaled).verdict == "may_explode"
    assert pascanu_bound(cell, params._replace(W=params.W * 0.999)).verdict == "vanishing"
    chex.assert_trees_all_close(bound.eta, sigma, rtol=1e-12)
