"""The online handwriting recogniser: frames, both directions, padding, CTC loss, save / load."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.models import ctc
from rnnjax.models import handwriting_data as hd
from rnnjax.models import handwriting_recognition as hr


@pytest.fixture
def batch():
    data = hd.dataset(["ink", "pen", "a"], 3, seed=0, U=3)
    return tuple(map(jnp.asarray, (data.targets, data.lengths, data.chars, data.char_lengths)))


def test_log_probs_shapes_and_frames(rng, batch):
    x, n, _, _ = batch
    model = hr.recogniser(hidden=8, layers=2, stack=3)
    params = model.init(rng)
    lp, frames = jax.jit(model.log_probs)(params, x, n)
    chex.assert_shape(lp, (3, -(-x.shape[1] // 3), hr.CLASSES))
    np.testing.assert_array_equal(np.asarray(frames), -(-np.asarray(n) // 3))
    np.testing.assert_allclose(np.asarray(jnp.exp(lp).sum(-1)), 1.0, rtol=1e-5)


def test_padding_changes_nothing_and_both_directions_read_everything(rng, batch):
    x, n, _, _ = batch
    model = hr.recogniser(hidden=8, layers=2, stack=2)
    params = model.init(rng)
    b, length = 2, int(n[2])  # the shortest word, "a"
    garbage = x.at[b, length:].set(jax.random.normal(rng, x[b, length:].shape))
    lp, frames = model.log_probs(params, garbage, n)
    alone, _ = model.log_probs(params, x[b : b + 1, :length], n[b : b + 1])  # no padding at all
    F = int(frames[b])
    np.testing.assert_allclose(np.asarray(lp[b, :F]), np.asarray(alone[0, :F]), atol=1e-5)

    def first_frame(x):  # log y_0 depends on the last point through the backward LSTMs
        return model.log_probs(params, x, n)[0][b, 0].sum()

    g = jax.grad(first_frame)(x)  # (B, T, 3)
    assert float(jnp.abs(g[b, length - 1]).max()) > 0
    assert float(jnp.abs(g[b, length:]).max()) == 0  # padding is never read
    assert float(jnp.abs(g[0]).max()) == 0  # nor the other words


def test_loss_is_ctc_per_character(rng, batch):
    model = hr.recogniser(hidden=8, layers=1, stack=2)
    params = model.init(rng)
    x, n, c, cn = batch
    lp, frames = model.log_probs(params, x, n)
    want = ctc.ctc_loss(lp, frames, c, cn).sum() / cn.sum()
    np.testing.assert_allclose(float(model.loss(params, *batch)), float(want), rtol=1e-6)
    grads = jax.grad(model.loss)(params, *batch)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_save_load_and_read(rng, batch, tmp_path):
    model = hr.recogniser(hidden=8, layers=2, stack=2)
    params = model.init(rng)
    hr.save(tmp_path, model, params)
    loaded_model, loaded = hr.load(tmp_path)
    assert loaded_model.config == model.config
    chex.assert_trees_all_equal(loaded, params)
    x, n, _, _ = batch
    trajs = [np.asarray(x[i, : n[i]]) for i in range(3)]
    texts = hr.read(model, params, trajs)
    assert texts == hr.read(loaded_model, loaded, trajs)
    assert all(set(t) <= set(hd.ALPHABET) for t in texts)
    assert len(hr.read(model, params, trajs, beam=3)) == 3
    with pytest.raises(ValueError, match=r"has no recogniser\.npz"):
        hr.load(tmp_path / "missing")


def test_bad_hyper_parameters_are_refused():
    for kwargs, name in (
        ({"hidden": 0}, "hidden"),
        ({"layers": 0}, "layers"),
        ({"stack": 1.5}, "stack"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            hr.recogniser(**kwargs)
