"""Sampling: seeded, top-k = 1 is greedy decoding, filtering, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.data import build_vocab
from rnnjax.train import build_cells, char_model, sample
from rnnjax.train.sampling import filter_logits

VOCAB = build_vocab("abcdefgh ijklmnop\n")


@pytest.fixture(scope="module")
def model_and_params():
    model = char_model(VOCAB.size, build_cells("lstm", 16, layers=2), embed_dim=6)
    params = jax.tree.map(lambda x: 3.0 * x, model.init(jax.random.key(3)))  # peaked outputs
    return model, params


def test_seeded_and_greedy(model_and_params):
    model, params = model_and_params
    a = sample(model, params, VOCAB, "abc", 40, seed=1)
    assert len(a) == 40 and set(a) <= set(VOCAB.chars)
    assert sample(model, params, VOCAB, "abc", 40, seed=1) == a
    assert sample(model, params, VOCAB, "abc", 40, seed=2) != a
    greedy = sample(model, params, VOCAB, "abc", 20, top_k=1, seed=5)
    # the same by hand: feed the argmax back one step at a time
    carry = model.initial_carry(params, ())
    carry, log_probs = model.apply(params, jnp.asarray(VOCAB.encode("abc")), carry)
    last, chars = log_probs[-1], []
    for _ in range(20):
        token = jnp.argmax(last)
        chars.append(VOCAB.chars[int(token)])
        carry, last = model.step(params, carry, token)
    assert greedy == "".join(chars)


def step_by_step(model, params, prompt, length, temperature, top_k, seed):
    """The reference: one `Model.step` per character, the t-th drawn with fold_in(key, t)."""
    key = jax.random.key(seed)
    carry = model.initial_carry(params, ())
    carry, log_probs = model.apply(params, jnp.asarray(VOCAB.encode(prompt)), carry)
    last, chars = log_probs[-1], []
    for t in range(length):
        logits = filter_logits(last, temperature, top_k)
        token = jax.random.categorical(jax.random.fold_in(key, t), logits)
        chars.append(VOCAB.chars[int(token)])
        carry, last = model.step(params, carry, token)
    return "".join(chars)


@pytest.mark.parametrize(
    "prompt,length,temperature,top_k,seed",
    [("abc defg hij" * 7, 25, 0.8, None, 1), ("h", 30, 1.3, 4, 7), ("ab\nc", 12, 0.5, 2, 0)],
)
def test_sampling_matches_the_step_by_step_reference(
    model_and_params, prompt, length, temperature, top_k, seed
):
    model, params = model_and_params
    text = sample(
        model, params, VOCAB, prompt, length, temperature=temperature, top_k=top_k, seed=seed
    )
    assert text == step_by_step(model, params, prompt, length, temperature, top_k, seed)


def test_a_second_call_does_not_recompile(model_and_params):
    import rnnjax.train.sampling as sampling

    model, params = model_and_params
    sample(model, params, VOCAB, "abc", 15, temperature=0.9, seed=0)
    before = sampling._generate._cache_size()
    other = jax.tree.map(lambda x: 0.5 * x, params)  # new values, same shapes
    sample(model, other, VOCAB, "cba", 15, temperature=1.2, seed=3)
    assert sampling._generate._cache_size() == before


def test_filter_logits():
    log_probs = jnp.log(jnp.asarray([0.1, 0.5, 0.15, 0.25]))
    kept = filter_logits(log_probs, 1.0, 2)
    np.testing.assert_array_equal(np.isfinite(kept), [False, True, False, True])
    sharp = jax.nn.softmax(filter_logits(log_probs, 0.5, None))  # τ = 1/2: p² renormalised
    p2 = np.array([0.1, 0.5, 0.15, 0.25]) ** 2
    np.testing.assert_allclose(sharp, p2 / p2.sum(), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt=""), "must not be empty"),
        (dict(prompt="xyz!"), "not in the vocabulary"),
        (dict(prompt="a", temperature=0.0), "temperature"),
        (dict(prompt="a", top_k=0), "top_k"),
        (dict(prompt="a", length=0), "length"),
    ],
)
def test_bad_input(model_and_params, kwargs, match):
    model, params = model_and_params
    with pytest.raises(ValueError, match=match):
        sample(model, params, VOCAB, **kwargs)
