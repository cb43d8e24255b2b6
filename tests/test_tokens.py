"""Token inputs of `unroll` (`rnnjax.tokens`): the same results as embedding first, whether the
projection is folded into the table (V < T·B) or the rows are gathered first."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES, assert_close, random_like
from jax.test_util import check_grads

import rnnjax as rj
from rnnjax.tokens import Tokens, project_tokens

B, T, D, H = 3, 6, 4, 5
FOLDED, GATHERED = 7, 40  # vocabularies below and above T·B = 18 tokens


def _setup(key, cell, V):
    k_p, k_e, k_t = jax.random.split(key, 3)
    params = random_like(k_p, cell.init(k_p, D))
    table = jax.random.normal(k_e, (V, D))  # (V, D)
    ids = jax.random.randint(k_t, (B, T), 0, V)  # (B, T)
    return params, table, ids


def _outputs_and_grads(cell, params, table, xs_of, backend="auto", **options):
    """(final carry, ys) and the gradients of a loss of both w.r.t. (params, table)."""

    def loss(params, table):
        carry, ys = rj.unroll(cell, params, xs_of(table), backend=backend, **options)
        leaves = jax.tree.leaves(carry)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(c)) for c in leaves), (carry, ys)

    grads, outputs = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, table)
    return outputs, grads


@pytest.mark.parametrize("V", [FOLDED, GATHERED], ids=["folded", "gathered"])
@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "lstm_peephole", "gru", "layer_norm_lstm"])
def test_tokens_equal_the_embedded_floats(rng, name, V):
    """Outputs, final carry and every gradient (params and table) against unroll of E[ids] on
    the scan backend."""
    cell = rj.layer_norm_lstm(H) if name == "layer_norm_lstm" else CELL_FACTORIES[name](H)
    params, table, ids = _setup(rng, cell, V)
    got = _outputs_and_grads(cell, params, table, lambda E: Tokens(E, ids))
    want = _outputs_and_grads(cell, params, table, lambda E: E[ids], backend="scan")
    assert_close(got, want, rtol=1e-5)


def test_folded_projection_is_one_hot_times_the_projected_table(rng):
    """px = onehot(k) (E U) + b: the lecture's one-hot input through the input weights."""
    cell = rj.lstm(H)
    params, table, ids = _setup(rng, cell, FOLDED)
    px = project_tokens(cell, params, table, ids)  # (B, T, 4H)
    one_hot = np.asarray(jax.nn.one_hot(ids, FOLDED), np.float64)  # (B, T, V)
    want = one_hot @ (np.asarray(table, np.float64) @ np.asarray(params.U, np.float64))
    np.testing.assert_allclose(px, want + np.asarray(params.b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("V", [FOLDED, GATHERED], ids=["folded", "gathered"])
def test_token_projection_passes_check_grads(rng, V):
    cell = rj.gru(H)
    params, table, ids = _setup(rng, cell, V)

    def px(params, table):
        return project_tokens(cell, params, table, ids)

    check_grads(px, (params, table), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    "options",
    [
        dict(lengths=np.array([6, 2, 4])),
        dict(lengths=np.array([6, 2, 4]), reverse=True),
        dict(resets=np.array([[0, 0, 1, 0, 0, 0]] * B, bool)),
        dict(chunk=4),
        dict(time_major=True),
    ],
    ids=["lengths", "reversed-lengths", "resets", "chunked", "time-major"],
)
def test_tokens_follow_every_unroll_option(rng, options):
    cell = rj.lstm(H)
    params, table, ids = _setup(rng, cell, FOLDED)
    if options.get("time_major"):
        ids = ids.T  # (T, B)
    got = _outputs_and_grads(cell, params, table, lambda E: Tokens(E, ids), **options)
    want = _outputs_and_grads(cell, params, table, lambda E: E[ids], backend="scan", **options)
    assert_close(got, want, rtol=1e-5)


def test_one_sequence_of_tokens(rng):
    cell = rj.gru(H)
    params, table, ids = _setup(rng, cell, 3)  # V = 3 < T tokens: folded
    carry, ys = rj.unroll(cell, params, Tokens(table, ids[0]))  # ids (T,)
    want_carry, want_ys = rj.unroll(cell, params, table[ids[0]], backend="scan")
    assert ys.shape == (T, H)
    assert_close((carry, ys), (want_carry, want_ys), rtol=1e-5)


@pytest.mark.parametrize("V", [FOLDED, GATHERED], ids=["folded", "gathered"])
def test_ids_outside_the_table_embed_to_zero_under_jit(rng, V):
    """Under jit the ids cannot be checked: one outside [0, V) reads the zero vector (px = b),
    like `rnnjax.embedding`, and adds no gradient to the table."""
    cell = rj.lstm(H)
    params, table, ids = _setup(rng, cell, V)
    bad = ids.at[0, 1].set(-1).at[2, 3].set(V)
    keep = ((bad >= 0) & (bad < V))[..., None]  # (B, T, 1)

    @jax.jit
    def tokens_run(params, table, ids):  # ids traced: not checkable
        return _outputs_and_grads(cell, params, table, lambda E: Tokens(E, ids))

    got = tokens_run(params, table, bad)
    want = _outputs_and_grads(
        cell, params, table, lambda E: jnp.where(keep, E[jnp.clip(bad, 0, V - 1)], 0), "scan"
    )
    assert_close(got, want, rtol=1e-5)
    unread = np.setdiff1d(np.arange(V), np.asarray(bad))  # rows no valid id reads
    np.testing.assert_array_equal(got[1][1][unread], 0)


def test_regularised_training_cell_gathers_first(rng):
    """A training cell draws one input mask per sequence: its projection does not read each
    input alone, so the tokens are embedded first, and the result equals the float path."""
    k_d, k_r = jax.random.split(rng)
    base = rj.lstm(H)
    params, table, ids = _setup(k_d, base, FOLDED)
    cell = rj.regularised(base, k_r, input_dropout=0.5, recurrent_dropout=0.3)
    got = _outputs_and_grads(cell, params, table, lambda E: Tokens(E, ids))
    want = _outputs_and_grads(cell, params, table, lambda E: E[ids], backend="scan")
    assert_close(got, want, rtol=1e-5)


def test_char_model_reads_tokens_through_unroll(rng):
    """The character model's first layer reads Tokens: the same log-probabilities and
    gradients as the embedding layer followed by the stack."""
    from rnnjax.train.model import build_cells, char_model

    V = 13
    model = char_model(V, build_cells("lstm", H, layers=2), embed_dim=D)
    params = random_like(rng, model.init(rng))
    tokens = jax.random.randint(jax.random.fold_in(rng, 1), (B, T), 0, V)

    def via_tokens(params):
        return jnp.sum(jnp.exp(model.apply(params, tokens)[1]) ** 2)

    def via_features(params):
        xs = model.features(params, tokens)  # (B, T, D)
        return jnp.sum(jnp.exp(model.head(params, model.stack.apply(params.rnn, xs)[1])) ** 2)

    assert_close(jax.grad(via_tokens)(params), jax.grad(via_features)(params), rtol=1e-5)
    np.testing.assert_allclose(via_tokens(params), via_features(params), rtol=1e-6)


@pytest.mark.parametrize(
    "tokens, match",
    [
        (lambda E, ids: Tokens(E, ids.astype(jnp.float32)), "must be integers"),
        (lambda E, ids: Tokens(E[:, :3], ids), "input_size=4"),
        (lambda E, ids: Tokens(E[None], ids), "must be \\(V, D\\)"),
        (lambda E, ids: Tokens(E, ids[None]), "Tokens.ids must be"),
        (lambda E, ids: Tokens(E, ids.at[1, 2].set(7)), "7"),
        (lambda E, ids: Tokens(E.astype(jnp.int32), ids), "float"),
    ],
    ids=["float-ids", "table-features", "table-rank", "ids-rank", "id-outside", "int-table"],
)
def test_bad_tokens_raise_naming_the_value(rng, tokens, match):
    cell = rj.lstm(H)
    params, table, ids = _setup(rng, cell, FOLDED)
    with pytest.raises(ValueError, match=match):
        rj.unroll(cell, params, tokens(table, ids))


def test_tokens_under_vmap_and_forward_mode(rng):
    """vmap over sequences of ids, and jax.jvp with respect to the table (auto picks scan)."""
    cell = rj.lstm(H)
    params, table, ids = _setup(rng, cell, FOLDED)
    got = jax.vmap(lambda i: rj.unroll(cell, params, Tokens(table, i))[1])(ids)  # (B, T, H)
    want = jax.vmap(lambda i: rj.unroll(cell, params, table[i], backend="scan")[1])(ids)
    assert_close(got, want, rtol=1e-5)
    tangent = jax.random.normal(jax.random.fold_in(rng, 7), table.shape)

    def tangent_of(xs_of):
        return jax.jvp(lambda E: rj.unroll(cell, params, xs_of(E))[1], (table,), (tangent,))[1]

    assert_close(tangent_of(lambda E: Tokens(E, ids)), tangent_of(lambda E: E[ids]), rtol=1e-5)
