"""Embedding, readout, deep stacks, bidirectional RNNs, sequence losses and initialisers."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_like

import rnnjax as rj

B, T, D, H, V = 3, 7, 4, 5, 11


def test_embedding_lookup_equals_one_hot_times_E(rng):
    """The lecture's "why not just indices?": onehot(k) E selects row k of E."""
    k_e, k_t = jax.random.split(rng)
    emb = rj.embedding(V, D)
    params = emb.init(k_e)
    tokens = jax.random.randint(k_t, (B, T), 0, V)
    chex.assert_trees_all_close(
        emb.apply(params, tokens), jax.nn.one_hot(tokens, V) @ params.E, rtol=1e-6
    )
    with pytest.raises(ValueError, match="integer tokens"):
        emb.apply(params, tokens.astype(jnp.float32))


def test_readout_is_log_softmax_of_the_affine_map(rng):
    k_r, k_h = jax.random.split(rng)
    out = rj.readout(V)
    params = random_like(k_r, out.init(k_r, H))
    h = jax.random.normal(k_h, (B, T, H))
    log_y = out.apply(params, h)
    logits = np.asarray(h) @ np.asarray(params.V) + np.asarray(params.b)
    want = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(log_y, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input_size=5"):
        out.apply(params, h[..., :3])


def test_stack_runs_layer_by_layer_and_steps_consistently(rng):
    k_p, k_x = jax.random.split(rng)
    stack = rj.stacked([rj.lstm(H), rj.gru(H + 1), rj.simple_rnn(2)])
    params = random_like(k_p, stack.init(k_p, D))
    xs = jax.random.normal(k_x, (B, T, D))
    carries, ys = stack.apply(params, xs)
    # the definition: each layer unrolled over the previous layer's outputs
    h = xs
    for cell, p, final in zip(stack.cells, params, carries, strict=True):
        want_final, h = rj.unroll(cell, p, h)
        chex.assert_trees_all_close(final, want_final, rtol=1e-6)
    chex.assert_trees_all_close(ys, h, rtol=1e-6)
    # stepping through all layers one timestep at a time gives the same outputs
    carry = stack.initial_carry(params, (B,))
    for t in range(T):
        carry, y = stack.step(params, carry, xs[:, t])
        chex.assert_trees_all_close(y, ys[:, t], rtol=1e-5, atol=1e-6)


def test_stack_dropout_needs_a_key_and_is_inverted(rng):
    stack = rj.stacked([rj.simple_rnn(64), rj.simple_rnn(64)], dropout=0.5)
    params = stack.init(rng, D)
    xs = jax.random.normal(rng, (B, T, D))
    _, ys_eval = stack.apply(params, xs)
    _, ys_eval_again = stack.apply(params, xs)
    chex.assert_trees_all_equal(ys_eval, ys_eval_again)  # no key: deterministic
    _, ys_a = stack.apply(params, xs, key=jax.random.key(1))
    _, ys_b = stack.apply(params, xs, key=jax.random.key(2))
    assert not jnp.allclose(ys_a, ys_b) and not jnp.allclose(ys_a, ys_eval)
    with pytest.raises(ValueError, match="dropout"):
        rj.stacked([rj.simple_rnn(4)], dropout=1.0)
    with pytest.raises(ValueError, match="at least one cell"):
        rj.stacked([])


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_with_lengths(merge, rng):
    k_p, k_x = jax.random.split(rng)
    bi = rj.bidirectional(rj.lstm(H), rj.lstm(H), merge=merge)
    params = random_like(k_p, bi.init(k_p, D))
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jnp.array([T, 1, 4])
    (_, bw), ys = bi.apply(params, xs, lengths=lengths)
    for b, L in enumerate(lengths.tolist()):
        _, f_ys = rj.unroll(bi_cell := rj.lstm(H), params.forward, xs[b, :L])
        b_final, b_ys = rj.unroll(bi_cell, params.backward, xs[b, :L][::-1])
        b_ys = b_ys[::-1]
        want = jnp.concatenate([f_ys, b_ys], -1) if merge == "concat" else f_ys + b_ys
        chex.assert_trees_all_close(ys[b, :L], want, rtol=1e-5, atol=1e-6)
        assert jnp.all(ys[b, L:] == 0)
        chex.assert_trees_all_close(jax.tree.map(lambda a, b=b: a[b], bw), b_final, rtol=1e-5)
    assert ys.shape[-1] == (2 * H if merge == "concat" else H)
    with pytest.raises(ValueError, match="equal hidden sizes"):
        rj.bidirectional(rj.lstm(3), rj.lstm(4), merge="sum")


def test_sequence_cross_entropy_perplexity_and_bits(rng):
    k_l, k_t = jax.random.split(rng)
    logits = jax.random.normal(k_l, (B, T, V))
    targets = jax.random.randint(k_t, (B, T), 0, V)
    mask = jnp.arange(T)[None, :] < jnp.array([T, 2, 5])[:, None]
    loss = rj.sequence_cross_entropy(logits, targets, mask)
    log_p = np.asarray(jax.nn.log_softmax(logits))
    nll = [-log_p[b, t, targets[b, t]] for b in range(B) for t in range(T) if mask[b, t]]
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
    # a uniform prediction costs log V nats = log2 V bits, perplexity V
    uniform = rj.sequence_cross_entropy(jnp.zeros((B, T, V)), targets)
    np.testing.assert_allclose(rj.perplexity(uniform), V, rtol=1e-5)
    np.testing.assert_allclose(rj.bits_per_char(uniform), math.log2(V), rtol=1e-5)
    with pytest.raises(ValueError, match="disagree"):
        rj.sequence_cross_entropy(logits, targets[:, :3])
    with pytest.raises(ValueError, match="integer"):
        rj.sequence_cross_entropy(logits, targets.astype(jnp.float32))


@pytest.mark.parametrize("radius", [0.5, 0.95, 1.5])
def test_spectral_radius_init_is_exact(radius, rng):
    W = rj.initializers.spectral_radius(radius)(rng, (40, 40))
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(np.asarray(W))).max(), radius, rtol=1e-4)


def test_smart_tanh_scheme_is_sparse_with_radius_095(rng):
    kwargs = rj.initializers.scheme("smart_tanh")
    cell = rj.simple_rnn(50, **kwargs)
    params = cell.init(rng, 3)
    W = np.asarray(params.W)
    assert ((W != 0).sum(axis=1) == 15).all()  # 15 outgoing weights per unit (h @ W: rows)
    assert not ((W != 0).sum(axis=0) == 15).all()  # (columns are not constrained)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(W)).max(), 0.95, rtol=1e-4)
    assert cell.config.activation == "tanh"
    assert np.std(np.asarray(params.U)) < 0.02  # U ~ N(0, 0.01)


@pytest.mark.parametrize(("name", "std"), [("smart_tanh", 0.01), ("basic_tanh", 0.1)])
def test_pascanu_readout_init(name, std):
    V = rj.initializers.readout_init(name)(jax.random.key(0), (200, 50))
    np.testing.assert_allclose(np.std(np.asarray(V)), std, rtol=0.05)
    task = rj.data.make_task("temporal_order", 20)
    model = rj.train.task_model(task, rj.train.build_cells("simple_rnn", 50, init=name), init=name)
    np.testing.assert_allclose(np.std(model.init(jax.random.key(1)).out.V), std, rtol=0.2)
    with pytest.raises(ValueError, match="unknown init scheme"):
        rj.initializers.readout_init("xavier")


def test_irnn_scheme_is_identity_relu(rng):
    cell = rj.simple_rnn(8, **rj.initializers.scheme("irnn"))
    params = cell.init(rng, 3)
    chex.assert_trees_all_equal(params.W, jnp.eye(8))
    assert cell.config.activation == "relu"
    with pytest.raises(ValueError, match="unknown init scheme"):
        rj.initializers.scheme("xavier")


def test_lstm_forget_bias_and_per_gate_orthogonal_init(rng):
    cell = rj.lstm(6, forget_bias=1.0)
    p = cell.init(rng, 3)
    chex.assert_trees_all_equal(p.b, jnp.concatenate([jnp.zeros(6), jnp.ones(6), jnp.zeros(12)]))
    for g in range(4):  # each (H, H) gate block of W is orthogonal
        block = p.W[:, g * 6 : (g + 1) * 6]
        chex.assert_trees_all_close(block.T @ block, jnp.eye(6), atol=1e-5)
