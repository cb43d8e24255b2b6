"""`unroll` semantics: lengths, reverse, time-major, unroll/remat/chunk options and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES, assert_close, random_like

import rnnjax as rj

B, T, D, H = 4, 6, 3, 5


def make_case(name, key, batch=B):
    k_c, k_p, k_x, k_h = jax.random.split(key, 4)
    cell = CELL_FACTORIES[name](H)
    params = random_like(k_p, cell.init(k_c, D))
    xs = jax.random.normal(k_x, (batch, T, D))
    carry = random_like(k_h, cell.initial_carry(params, (batch,)))
    return cell, params, xs, carry


def one_sequence(cell, params, x, carry, reverse):
    """The definition, on one unpadded sequence (L, D): flip, run, flip back."""
    x = x[::-1] if reverse else x
    final, ys = rj.unroll(cell, params, x, carry)
    return final, (ys[::-1] if reverse else ys)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["simple_rnn", "lstm_peephole", "gru", "multiplicative_rnn"])
def test_lengths_match_each_sequence_run_alone(name, reverse, rng):
    cell, params, xs, carry = make_case(name, rng)
    lengths = jnp.array([T, 1, 3, 0])  # full length, length 1, ragged, empty
    final, ys = jax.jit(lambda p, x, c, n: rj.unroll(cell, p, x, c, lengths=n, reverse=reverse))(
        params, xs, carry, lengths
    )
    for b, L in enumerate(lengths.tolist()):
        carry_b = jax.tree.map(lambda a, b=b: a[b], carry)
        final_b = jax.tree.map(lambda a, b=b: a[b], final)
        chex.assert_trees_all_equal(ys[b, L:], jnp.zeros((T - L, H)))  # padding outputs zero
        if L == 0:
            chex.assert_trees_all_close(final_b, carry_b)  # nothing read: carry unchanged
            continue
        want_final, want_ys = one_sequence(cell, params, xs[b, :L], carry_b, reverse)
        chex.assert_trees_all_close(ys[b, :L], want_ys, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(final_b, want_final, rtol=1e-5, atol=1e-6)


def test_reverse_without_lengths_reads_from_the_end(rng):
    cell, params, xs, carry = make_case("lstm", rng)
    final, ys = rj.unroll(cell, params, xs, carry, reverse=True)
    want_final, want_ys = rj.unroll(cell, params, xs[:, ::-1], carry)
    chex.assert_trees_all_close((final, ys), (want_final, want_ys[:, ::-1]), rtol=1e-6)


def test_gradients_do_not_flow_from_padding(rng):
    cell, params, xs, _ = make_case("gru", rng)
    lengths = jnp.array([2, T, 4, 1])
    grad = jax.grad(lambda x: rj.unroll(cell, params, x, lengths=lengths)[1].sum())(xs)
    for b, L in enumerate(lengths.tolist()):
        assert jnp.all(grad[b, L:] == 0) and jnp.any(grad[b, :L] != 0)


@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "gru"])
def test_time_major_unroll_and_remat_change_nothing(name, rng):
    cell, params, xs, carry = make_case(name, rng)
    lengths = jnp.array([3, T, 1, 5])

    def loss(p, x, c, **options):
        final, ys = rj.unroll(cell, p, x, c, lengths=lengths, **options)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))

    grad = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
    base = grad(params, xs, carry)
    for options in [dict(unroll=3), dict(remat=True), dict(unroll=T, remat=True)]:
        got = jax.jit(jax.value_and_grad(lambda p, x, c, o=options: loss(p, x, c, **o), (0, 1, 2)))(
            params, xs, carry
        )
        chex.assert_trees_all_close(got, base, rtol=1e-5, atol=1e-6)
    final_tm, ys_tm = rj.unroll(
        cell, params, jnp.swapaxes(xs, 0, 1), carry, lengths=lengths, time_major=True
    )
    final, ys = rj.unroll(cell, params, xs, carry, lengths=lengths)
    chex.assert_trees_all_close((final_tm, jnp.swapaxes(ys_tm, 0, 1)), (final, ys), rtol=1e-6)


def test_remat_stores_less_for_the_backward_pass(rng):
    """Checkpointing the step shrinks the residuals BPTT keeps (measured by XLA)."""
    cell = rj.lstm(64)
    params = cell.init(rng, 32)
    xs = jnp.ones((8, 200, 32))

    def temp_bytes(remat):
        f = jax.jit(
            jax.grad(lambda p: rj.unroll(cell, p, xs, remat=remat, backend="scan")[1].sum())
        )
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(True) < 0.75 * temp_bytes(False)


CHUNK_OPTIONS = [
    dict(chunk=4),  # T = 6: one chunk of 4, then the 2 steps left over
    dict(chunk=5),  # a last chunk of one step
    dict(chunk=T),
    dict(chunk=T + 5),  # longer than the sequence: one chunk
    dict(chunk=4, remat=True),
    dict(chunk=2, reverse=True),
    dict(chunk=4, reverse=True, remat=True),
]


@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "gru", "multiplicative_rnn"])
def test_chunks_change_nothing(name, rng):
    """Chunked runs (projection, loop and gradients chunk by chunk) equal the one-piece
    reference: outputs, final carry and the gradients for params, inputs and carry, with
    ragged lengths, reverse, resets and remat, on every backend that runs the cell."""
    cell, params, xs, carry = make_case(name, rng)
    lengths = jnp.array([3, T, 1, 5])
    resets = jax.random.bernoulli(jax.random.fold_in(rng, 1), 0.3, (B, T))

    def loss(p, x, c, **options):
        final, ys = rj.unroll(cell, p, x, c, lengths=lengths, **options)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))

    # chunking is the driver's, the same for every backend: the fast ones where the cell has
    # them ("auto" is fused_cpu at this batch on CPU), else the reference loop
    backends = ["fused", "auto"] if cell.structure is not None else ["scan"]
    for options in [*CHUNK_OPTIONS, dict(chunk=4, resets=resets)]:
        base = {k: v for k, v in options.items() if k in ("reverse", "resets")}
        want = jax.jit(
            jax.value_and_grad(
                lambda p, x, c, o=base: loss(p, x, c, backend="scan", **o), (0, 1, 2)
            )
        )(params, xs, carry)
        for backend in backends:
            got = jax.jit(
                jax.value_and_grad(
                    lambda p, x, c, o=options, b=backend: loss(p, x, c, backend=b, **o), (0, 1, 2)
                )
            )(params, xs, carry)
            assert_close(got, want, 1e-5)


def test_chunks_hold_the_projection_one_chunk_at_a_time(rng):
    """Chunking removes the (T, B, 4H) projected inputs and their gradient from the training
    step's memory; with remat the per-step residuals go too (measured by XLA)."""
    cell = rj.lstm(64)
    params = cell.init(rng, 32)
    xs = jnp.ones((8, 400, 32))

    def temp_bytes(**options):
        def loss(p):
            return jnp.sum(rj.unroll(cell, p, xs, backend="fused", **options)[1] ** 2)

        f = jax.jit(jax.grad(loss))
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    whole = temp_bytes()
    projection = 400 * 8 * 4 * 64 * 4  # bytes of px (T, B, 4H), float32
    assert whole - temp_bytes(chunk=50) >= projection  # measured 1.5x projection
    assert temp_bytes(chunk=50, remat=True) < 0.3 * whole  # measured 0.20


BAD_INPUTS = [
    (lambda xs: xs[0, 0], {}, r"rank 1"),
    (lambda xs: xs[None], {}, r"rank 4"),
    (lambda xs: xs[..., :2], {}, r"xs has 2 features.*input_size=3"),
    (lambda xs: xs.astype(jnp.int32), {}, r"float.*int32"),
    (lambda xs: xs[:, :0], {}, r"T=0"),
    (lambda xs: xs, dict(lengths=jnp.array([1, -1, 2, 3])), r"\[0, T=6\].*min=-1"),
    (lambda xs: xs, dict(lengths=jnp.array([1, 7, 2, 3])), r"\[0, T=6\].*max=7"),
    (lambda xs: xs, dict(lengths=jnp.array([1.0, 2.0, 2.0, 3.0])), r"lengths must be integers"),
    (lambda xs: xs, dict(lengths=jnp.array([1, 2])), r"batch shape \(4,\)"),
    (lambda xs: xs, dict(backend="cudnn"), r"unknown backend='cudnn'"),
    (lambda xs: xs, dict(unroll=0), r"unroll=0"),
    (lambda xs: xs, dict(chunk=0), r"chunk=0"),
    (lambda xs: xs, dict(chunk=2.5), r"chunk=2.5"),
    (lambda xs: xs, dict(chunk=True), r"chunk=True"),
    (lambda xs: xs, dict(carry=rj.LSTMCarry(jnp.zeros((4, 5)), jnp.zeros((4, 5)))), r"structure"),
    (lambda xs: xs, dict(carry=rj.RNNCarry(jnp.zeros((4, 6)))), r"\(4, 6\).*expects \(4, 5\)"),
]


@pytest.mark.parametrize("make_xs, options, message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(make_xs, options, message, rng):
    cell, params, xs, _ = make_case("simple_rnn", rng)
    with pytest.raises(ValueError, match=message):
        rj.unroll(cell, params, make_xs(xs), **options)


def test_lengths_under_jit_are_accepted_as_tracers(rng):
    cell, params, xs, _ = make_case("simple_rnn", rng)
    run = jax.jit(lambda n: rj.unroll(cell, params, xs, lengths=n)[1])
    np.testing.assert_array_equal(np.asarray(run(jnp.array([1, 2, 3, 4]))[0, 1:]), 0.0)
