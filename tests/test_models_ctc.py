"""CTC: the loss against a sum over every path, best-path and prefix beam decoding, CER."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.models import ctc


def collapse_oracle(path):
    """𝓑 written from the definition: merge runs (itertools.groupby), then drop blanks (0)."""
    return tuple(k for k, _ in itertools.groupby(path) if k != 0)


def labelling_probabilities(log_probs):
    """p(l | x) of every labelling l, summed over all (K + 1)^T paths."""
    T, K1 = log_probs.shape
    probs: dict[tuple, float] = {}
    for path in itertools.product(range(K1), repeat=T):
        p = math.exp(sum(log_probs[t, k] for t, k in enumerate(path)))
        label = collapse_oracle(path)
        probs[label] = probs.get(label, 0.0) + p
    return probs


def random_log_probs(key, T, K1, sharp=2.0):
    return np.asarray(jax.nn.log_softmax(sharp * jax.random.normal(key, (T, K1))), np.float64)


def test_collapse_merges_repeats_then_drops_blanks():
    assert ctc.collapse([1, 1, 0, 2, 0, 2, 2]) == [1, 2, 2]
    assert ctc.collapse([0, 0]) == []
    for path in itertools.product(range(3), repeat=5):
        assert tuple(ctc.collapse(path)) == collapse_oracle(path)


def test_ctc_loss_equals_the_sum_over_paths(rng):
    T, K1 = 5, 3
    keys = jax.random.split(rng, 3)
    lps = np.stack([random_log_probs(k, T, K1) for k in keys])  # (3, T, K1)
    labels = jnp.asarray([[1, 2, 0], [2, 2, 0], [1, 0, 0]])  # "ab", "bb" (needs a blank), "a"
    label_lengths = jnp.asarray([2, 2, 1])
    lengths = jnp.asarray([5, 5, 3])  # the third sequence has 3 valid steps
    got = jax.jit(ctc.ctc_loss)(jnp.asarray(lps, jnp.float32), lengths, labels, label_lengths)
    for b in range(3):
        want_label = tuple(np.asarray(labels[b, : label_lengths[b]]).tolist())
        p = labelling_probabilities(lps[b, : int(lengths[b])])[want_label]
        np.testing.assert_allclose(float(got[b]), -math.log(p), rtol=1e-4)


def test_wide_beam_search_finds_the_most_probable_labelling(rng):
    for key in jax.random.split(rng, 4):
        lp = random_log_probs(key, 4, 3, sharp=1.0)
        probs = labelling_probabilities(lp)
        best = max(probs, key=probs.get)
        labels, log_p = ctc.beam_decode_one(lp, beam=100, prune=-np.inf)
        assert tuple(labels) == best
        np.testing.assert_allclose(log_p, math.log(probs[best]), rtol=1e-9)


def test_beam_search_can_beat_the_best_path():
    # best path: blank, blank ("" with p = 0.36); but "a" sums 0.4·0.6 + 0.6·0.4 + 0.4·0.4 = 0.64
    lp = np.log(np.asarray([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc.greedy_decode(lp[None], [2]) == [[]]
    labels, log_p = ctc.beam_decode_one(lp, beam=2)
    assert labels == [1]
    np.testing.assert_allclose(math.exp(log_p), 0.64)
    assert ctc.beam_decode(lp[None], [2], beam=1) == [[]]  # a one-prefix beam is greedy here


def test_greedy_decode_respects_lengths():
    eye = np.log(np.eye(3)[[1, 1, 0, 2, 2, 1]] * 0.98 + 0.01)  # (6, 3): path a a _ b b a
    lp = np.stack([eye, eye])
    assert ctc.greedy_decode(lp, [6, 4]) == [[1, 2, 1], [1, 2]]


def test_edit_distance_and_error_rate():
    assert ctc.edit_distance("kitten", "sitting") == 3
    assert ctc.edit_distance("flaw", "lawn") == 2
    assert ctc.edit_distance("", "abc") == 3 == ctc.edit_distance("abc", "")
    for a, b in itertools.product(["", "ab", "ba", "abc", "cab"], repeat=2):
        assert ctc.edit_distance(a, b) == ctc.edit_distance(b, a)
        assert ctc.edit_distance(a, b) <= max(len(a), len(b))
    assert ctc.error_rate(["helo", "word"], ["hello", "world"]) == pytest.approx(2 / 10)
    with pytest.raises(ValueError, match="2 hypotheses but"):
        ctc.error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="beam must be a positive integer"):
        ctc.beam_decode_one(np.zeros((2, 3)), beam=0)
