"""Visual question answering: scenes and answers against an independent reader, where the
image enters the LSTM, decoding = teacher forcing, bad input, and seeded learning tests."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_models_seq2seq import run_tiny

from rnnjax.models import vqa
from rnnjax.models import vqa_data as vd

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PLURAL = {(w + "es" if w == "six" else w + "s"): d for d, w in enumerate(NAMES)}
PAINT = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}
COLOUR = list(PAINT)


def oracle(question, digits, colours):
    """Answers a question from the scene's digits and colour names (written apart from
    `vqa_data.ask`)."""
    n = len(digits)
    at = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": n - 1}
    if m := re.fullmatch(r"what is the (\w+) digit \?", question):
        return NAMES[digits[at[m[1]]]]
    if m := re.fullmatch(r"what colour is the (\w+) digit \?", question):
        return colours[at[m[1]]]
    if m := re.fullmatch(r"how many (\w+) digits are there \?", question):
        return NAMES[colours.count(m[1])]
    if m := re.fullmatch(r"how many (\w+) are there \?", question):
        return NAMES[digits.count(PLURAL[m[1]])]
    if m := re.fullmatch(r"is the (\w+) digit larger than the (\w+) \?", question):
        assert at[m[1]] != at[m[2]], question
        return "yes" if digits[at[m[1]]] > digits[at[m[2]]] else "no"
    side = {"left": -1, "right": 1}
    if m := re.fullmatch(r"what colour is the digit (left|right) of the (\w+) \?", question):
        (k,) = [k for k in range(n) if NAMES[digits[k]] == m[2]]  # named digit: unique
        return colours[k + side[m[1]]]
    if m := re.fullmatch(r"what is the digit (left|right) of the (\w+) one \?", question):
        (k,) = [k for k in range(n) if colours[k] == m[2]]
        return NAMES[digits[k + side[m[1]]]]
    m = re.fullmatch(r"which digits are (\w+) \?", question)
    return " ".join(NAMES[d] for d, c in zip(digits, colours, strict=True) if c == m[1]) or "none"


@pytest.fixture(scope="module")
def pools():
    return vd.load_pools()


def test_answers_agree_with_an_independent_reader_and_every_type_occurs(pools):
    (_, labels), _ = pools
    seed = int(np.random.SeedSequence().entropy % 2**31)
    scenes = vd.make_scenes(seed, 600, labels)
    for i in range(600):
        n = int(scenes.count[i])
        assert 2 <= n <= 4
        digits = labels[scenes.ids[i, :n]].tolist()
        colours = [COLOUR[c] for c in scenes.colours[i, :n]]
        question = vd.question_words(scenes.text[i], scenes.question_len[i])
        answer = vd.answer_words(scenes.text[i], scenes.question_len[i])
        assert oracle(question, digits, colours) == answer, (seed, i, question, digits, colours)
    assert np.all(np.bincount(scenes.kind, minlength=6) > 50)
    assert scenes.question_len.max() <= vd.QUESTION_LEN
    assert np.all(scenes.text[np.arange(600), scenes.question_len] != vd.VOCAB.index["<EOS>"])


def test_rendered_pixels_hold_each_digit_in_its_colour(pools, rng):
    (images, labels), _ = pools
    scenes = vd.make_scenes(3, 32, labels)
    canvas = jax.jit(vd.render)(
        jnp.asarray(images), scenes.ids, scenes.colours, scenes.count, scenes.shift
    )
    chex.assert_shape(canvas, (32, 8, 36, 3))
    canvas = np.asarray(canvas)
    for i in range(32):
        n, s = int(scenes.count[i]), int(scenes.shift[i])
        expected = np.zeros((8, 36, 3), np.float32)
        for k in range(n):
            paint = np.asarray(PAINT[COLOUR[scenes.colours[i, k]]], np.float32)
            expected[:, s + 8 * k : s + 8 * k + 8] = images[scenes.ids[i, k]][..., None] * paint
        np.testing.assert_allclose(canvas[i], expected, atol=1e-6)
        assert 0 <= s <= 4


def test_jitter_moves_each_tile_by_at_most_a_pixel_and_dims_it(pools):
    (images, _), _ = pools
    tiles = jnp.asarray(images[:24].reshape(4, 6, 8, 8))  # (B, K, 8, 8)
    key = jax.random.key(7)
    moved = np.asarray(vd.jitter(key, tiles, dimmest=1.0))  # movement alone
    padded = np.pad(np.asarray(tiles), ((0, 0), (0, 0), (1, 1), (1, 1)))
    shifts = set()
    for b in range(4):
        for k in range(6):
            found = [
                (dy, dx)
                for dy in range(3)
                for dx in range(3)
                if np.array_equal(moved[b, k], padded[b, k, dy : dy + 8, dx : dx + 8])
            ]
            assert found, (b, k)
            shifts.update(found)
    assert len(shifts) > 3  # the 24 tiles do not all move the same way
    dimmed = np.asarray(vd.jitter(key, tiles, dimmest=0.5))  # same key: same moves, scaled
    ratio = dimmed.sum((2, 3)) / moved.sum((2, 3))  # (B, K)
    assert np.all((ratio >= 0.5 - 1e-6) & (ratio <= 1 + 1e-6)) and np.ptp(ratio) > 0.1
    np.testing.assert_allclose(dimmed, moved * ratio[..., None, None], rtol=1e-5, atol=1e-7)


def test_render_augments_only_when_given_a_key(pools):
    (images, labels), _ = pools
    s = vd.make_scenes(4, 8, labels)
    pool = jnp.asarray(images)
    plain = vd.render(pool, s.ids, s.colours, s.count, s.shift)
    augmented = vd.render(pool, s.ids, s.colours, s.count, s.shift, jax.random.key(1))
    chex.assert_equal_shape([plain, augmented])
    assert not np.allclose(plain, augmented)
    slot = 8 * np.asarray(s.count)[:, None] + np.asarray(s.shift)[:, None]  # (B, 1)
    empty = np.arange(36)[None, :] >= slot  # past the last digit: a moved tile keeps its slot
    assert np.all(np.asarray(augmented).sum((1, 3))[empty] == 0)


def _batch(pools, n=4):
    (images, labels), _ = pools
    s = vd.make_scenes(5, n, labels)
    return vd.render(jnp.asarray(images), s.ids, s.colours, s.count, s.shift), s


@pytest.mark.parametrize("image", vqa.IMAGE_MODES)
def test_decoding_steps_equal_teacher_forcing(pools, image):
    model = vqa.VQAModel(image, 8, 16, rngs=nnx.Rngs(0))
    images, s = _batch(pools)
    log_probs = model(images, jnp.asarray(s.text))  # (B, L − 1, V)
    chex.assert_shape(log_probs, (4, s.text.shape[1] - 1, len(vd.VOCAB)))
    question = jnp.asarray(s.text[:, : vd.QUESTION_LEN])
    state, first = model.start(images, question, jnp.asarray(s.question_len))
    at = jnp.asarray(s.question_len - 1)
    teacher = jnp.take_along_axis(log_probs, at[:, None, None], axis=1)[:, 0]
    chex.assert_trees_all_close(first, teacher, rtol=1e-5, atol=1e-5)
    answer_word = jnp.asarray(s.text[np.arange(4), s.question_len])  # (B,)
    _, second = model.step(state, answer_word)
    teacher = jnp.take_along_axis(log_probs, (at + 1)[:, None, None], axis=1)[:, 0]
    chex.assert_trees_all_close(second, teacher, rtol=1e-5, atol=1e-5)


def test_where_the_image_enters(pools):
    """first: x_0 = v only; every: [E w_t; v] at each step; state: (h_0, c_0) from the image
    features; none: the image is never read."""
    images, s = _batch(pools)
    other = images[::-1]
    text = jnp.asarray(s.text)
    for image in vqa.IMAGE_MODES:
        model = vqa.VQAModel(image, 8, 16, rngs=nnx.Rngs(1))
        a, b = model(images, text), model(other, text)
        assert bool(jnp.allclose(a, b)) == (image == "none"), image
    model = vqa.VQAModel("first", 8, 16, rngs=nnx.Rngs(1))
    v = model.encode(images)
    carry, _ = model.rnn.step(model.rnn.initial_carry((4,)), v)  # the image step by hand
    _, hs = model.rnn(model.embed(text[:, :-1]), carry)  # then only words
    by_hand = jax.nn.log_softmax(model.out(hs), axis=-1)
    chex.assert_trees_all_close(by_hand, model(images, text), rtol=1e-5, atol=1e-5)
    every = vqa.VQAModel("every", 8, 16, rngs=nnx.Rngs(1))
    assert (
        every.rnn.functional_params.U.shape[0] == 16 and model.rnn.functional_params.U.shape[0] == 8
    )
    state = vqa.VQAModel("state", 8, 16, rngs=nnx.Rngs(1))
    h0, c0 = np.split(np.asarray(state.to_carry(state.features(images))), 2, axis=-1)
    carry = state.rnn.initial_carry((4,))._replace(h=jnp.tanh(h0), c=jnp.asarray(c0))
    _, hs = state.rnn(state.embed(text[:, :-1]), carry)  # the image only in (h_0, c_0)
    by_hand = jax.nn.log_softmax(state.out(hs), axis=-1)
    chex.assert_trees_all_close(by_hand, state(images, text), rtol=1e-5, atol=1e-5)
    assert state.rnn.functional_params.U.shape[0] == 8


def test_answer_questions_checks_its_input(pools):
    model = vqa.VQAModel("first", 8, 16, rngs=nnx.Rngs(0))
    images, _ = _batch(pools, 2)
    got = vqa.answer_questions(
        model, images, ["What is the first digit?", "which digits are red ?"]
    )
    assert len(got) == 2 and all(isinstance(a, str) for a in got)
    assert (
        len(vqa.answer_questions(model, np.asarray(images[0]), ["how many sevens are there?"])) == 1
    )
    for bad_images, questions, message in [
        (
            np.zeros((2, 8, 32, 3), np.float32),
            ["what is the first digit ?"] * 2,
            r"\(B, 8, 36, 3\)",
        ),
        (np.zeros((1, 8, 36, 3), np.int32), ["what is the first digit ?"], "must be float"),
        (images, ["what is the first digit ?"], "one question per image"),
        (images[:1], ["what is the fifth digit ?"], "unknown word 'fifth'"),
        (images[:1], [""], "1 to 10 words"),
        (images[:1], ["what is the first digit left of the second digit ?"], "1 to 10 words"),
    ]:
        with pytest.raises(ValueError, match=message):
            vqa.answer_questions(model, bad_images, questions)
    with pytest.raises(ValueError, match="image must be one of"):
        vqa.VQAModel("middle", 8, 16, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_vqa_app_writes_its_result_and_figure(tmp_path):
    out = tmp_path / "vqa"
    losses, result = run_tiny(
        "vqa", out, steps=20, hidden=16, embed=8, batch_size=16, train_size=200, test_size=60
    )
    assert losses[-1] < losses[0]
    ev = result["evaluation"]
    assert set(ev["exact_answer_by_kind"]) == set(vd.KINDS) and ev["image"] == "first"
    assert (out / "vqa_samples.png").stat().st_size > 1000
    assert result["target"] == {"metric": "exact_answer", "threshold": 0.9, "met": False}


@pytest.mark.slow
def test_augment_changes_what_training_sees(tmp_path):
    """Same seed and batches: only the jittered digits can make the trained weights differ."""
    flags = dict(steps=3, hidden=8, embed=4, batch_size=8, train_size=50, test_size=10)
    plain = run_tiny("vqa", tmp_path / "plain", image="state", **flags)[1]
    again = run_tiny("vqa", tmp_path / "again", image="state", **flags)[1]
    jittered = run_tiny("vqa", tmp_path / "jitter", image="state", augment=[], **flags)[1]
    sha = lambda r: r["training"]["params_sha256"]  # noqa: E731
    assert sha(plain) == sha(again) != sha(jittered)
    assert jittered["evaluation"]["augment"] and not plain["evaluation"]["augment"]


@pytest.mark.slow
def test_the_image_at_the_first_step_is_learned_and_used(tmp_path):
    """A few hundred seeded steps on colour questions: without the picture no model can beat
    the commonest colour (27 % of these held-out answers; chance 25 %)."""
    _, result = run_tiny(
        "vqa",
        tmp_path / "first",
        kinds="colour",
        steps=300,
        hidden=64,
        embed=32,
        batch_size=32,
        lr=5e-3,
        train_size=4000,
        test_size=300,
        seed=0,
    )
    assert result["evaluation"]["exact_answer"] >= 0.42
