"""Handwriting: traced trajectories, the mixture density, the attention window, a few steps."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models_seq2seq import run_tiny

from rnnjax.driver import unroll
from rnnjax.models import handwriting_data as hd
from rnnjax.models import mdn
from rnnjax.models.handwriting import writer
from rnnjax.train.metrics import read_metrics


def test_trajectory_round_trips_to_the_glyph_strokes():
    traj = hd.trajectory("ab")
    strokes = hd.strokes("ab")
    assert traj.shape == (sum(len(s) for s in strokes), 3)
    assert traj[:, 2].sum() == len(strokes)  # one pen lift per outline
    for got, want in zip(hd.to_points(traj), strokes, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(strokes[0][0], strokes[0][-1], atol=1e-9)  # closed outlines


def test_bad_text_is_refused():
    for bad, message in (("", "non-empty"), ("Hello", "outside a–z"), ("a b", "outside a–z")):
        with pytest.raises(ValueError, match=message):
            hd.trajectory(bad)
    with pytest.raises(ValueError, match="at most 3"):
        hd.encode_chars(["abcd"], 3)


def test_mixture_nll_equals_the_bivariate_normal_density(rng):
    M = 3
    y = jax.random.normal(rng, (4, mdn.mixture_size(M)))
    target = jnp.concatenate(
        [
            jax.random.normal(jax.random.fold_in(rng, 1), (4, 2)),
            jnp.asarray([[1.0], [0], [1], [0]]),
        ],
        axis=1,
    )
    got = mdn.negative_log_likelihood(mdn.split_mixture(y), target)
    mix = jax.tree.map(np.asarray, mdn.split_mixture(y))
    for b in range(4):
        density = 0.0
        for m in range(M):
            sx, sy, rho = np.exp(mix.log_sx[b, m]), np.exp(mix.log_sy[b, m]), mix.rho[b, m]
            cov = np.asarray([[sx**2, rho * sx * sy], [rho * sx * sy, sy**2]])
            d = np.asarray(target[b, :2]) - np.asarray([mix.mu_x[b, m], mix.mu_y[b, m]])
            gauss = np.exp(-0.5 * d @ np.linalg.solve(cov, d)) / (
                2 * math.pi * np.sqrt(np.linalg.det(cov))
            )
            density += np.exp(mix.log_pi[b, m]) * gauss
        e = 1 / (1 + np.exp(-mix.e_logit[b]))
        want = -np.log(density) - np.log(e if target[b, 2] == 1 else 1 - e)
        np.testing.assert_allclose(float(got[b]), want, rtol=1e-4)


def test_window_cell_unroll_equals_its_steps_and_reads_only_the_text(rng):
    chars = jnp.asarray([[1, 2, 3, 0], [4, 5, 0, 0]])
    lengths = jnp.asarray([3, 2])
    mask = jnp.arange(4)[None, :] < lengths[:, None]
    cell = mdn.window_cell(8, 2, jax.nn.one_hot(chars, 6), mask)
    params = cell.init(rng, 3)
    xs = jax.random.normal(jax.random.fold_in(rng, 1), (2, 5, 3))
    carry, ys = jax.jit(lambda p, x: unroll(cell, p, x))(params, xs)
    chex.assert_shape(ys, (2, 5, 8 + 6))
    c = cell.initial_carry(params, (2,))
    step = jax.jit(cell.step)
    for t in range(5):
        c, y = step(params, c, xs[:, t])
        chex.assert_trees_all_close(y, ys[:, t], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(c, carry, rtol=1e-5, atol=1e-6)
    w = np.asarray(ys[..., 8:])  # (2, 5, 6): weights only on the characters of each text
    assert np.all(w[0][:, [0, 4, 5]] == 0) and np.all(w[1][:, [0, 1, 2, 3]] == 0)
    assert np.all(np.asarray(carry.kappa) > 0)  # the window only moves forward


def test_writer_samples_and_gradients(rng):
    model = writer(8, components=2, window=2)
    params = model.init(rng)
    chars, n = hd.encode_chars(["ab", "c"], 3)
    trajs, kappa = jax.jit(model.sample, static_argnums=(2, 3))(
        params, rng, 7, 2, jnp.asarray(chars), jnp.asarray(n)
    )
    chex.assert_shape(trajs, (2, 7, 3))
    chex.assert_shape(kappa, (2, 7, 2))
    assert set(np.unique(np.asarray(trajs[..., 2])).tolist()) <= {0.0, 1.0}
    data = hd.stroke_data(["ab", "c"], 80, 3)
    grads = jax.jit(jax.grad(model.nll))(
        params, data.inputs, data.targets, data.lengths, data.chars, data.char_lengths
    )
    assert float(jnp.abs(grads.first.W_win).max()) > 0  # the window learns


def test_handwriting_trains_and_renders(tmp_path):
    out = tmp_path / "hw"
    _, result = run_tiny(
        "handwriting",
        out,
        steps=20,
        hidden=16,
        batch_size=8,
        components=3,
        window=2,
        max_letters=2,
        texts=["ab", "to"],
        lr=1e-2,
    )
    for model in ("unconditional", "synthesis"):  # each model has its own run directory
        records = read_metrics(out / model / "metrics.jsonl")
        losses = [r["loss"] for r in records if "loss" in r]
        assert len(losses) == 2 and losses[-1] < losses[0], model
    ev = result["evaluation"]
    assert np.isfinite(ev["val_nll_per_point_unconditional"])
    assert np.isfinite(ev["val_nll_per_point_synthesis"])
    assert (out / "handwriting_samples.png").stat().st_size > 1000
