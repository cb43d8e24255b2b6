"""Handwriting: Hershey pen data, the mixture density, the attention window, synthesis runs."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from HersheyFonts import HersheyFonts
from test_models_seq2seq import run_tiny

from rnnjax.driver import unroll
from rnnjax.models import handwriting_data as hd
from rnnjax.models import mdn
from rnnjax.models.handwriting_batches import bucket_batches, buckets
from rnnjax.models.handwriting_writer import cut_synthesis, writer
from rnnjax.train.metrics import read_metrics


def font_segments(text, font):
    """The font's own segments of ``text`` (HersheyFonts), in em with y up, as point pairs."""
    face = HersheyFonts()
    face.load_default_font(font)
    segs = np.asarray(list(face.lines_for_text(text)), np.float64)  # (n, 2, 2)
    return np.stack([segs[..., 0] / 21.0, (9.0 - segs[..., 1]) / 21.0], axis=-1)


def distance_to_segments(points, segs):
    """(n,) distance of each point to the nearest segment."""
    a, b = segs[:, 0], segs[:, 1]  # (m, 2)
    ab = b - a
    t = np.einsum("nmd,md->nm", points[:, None] - a[None], ab) / np.maximum(
        np.sum(ab * ab, -1), 1e-12
    )
    foot = a[None] + np.clip(t, 0, 1)[..., None] * ab[None]  # (n, m, 2)
    return np.linalg.norm(points[:, None] - foot, axis=-1).min(axis=1)


@pytest.mark.parametrize("font", hd.FONTS)
def test_strokes_trace_the_font_segments(font):
    text = "minimum"
    strokes = hd.font_strokes(text, font)
    segs = font_segments(text, font)
    ink = np.concatenate(strokes)
    assert distance_to_segments(ink, segs).max() < 1e-9  # every stroke point is font ink
    ends = np.concatenate([segs[:, 0], segs[:, 1]])
    for p in ends:  # and every font segment end is on some stroke
        assert np.min(np.linalg.norm(ink - p, axis=1)) < 1e-9
    # strokes join where segments meet: far fewer strokes than the font has segments
    assert len(strokes) < len(segs) / 3


def test_cursive_words_join_and_dots_come_after_the_letter():
    assert len(hd.font_strokes("hello", "cursive")) == 3  # h | e-l-l | o  (the font's joins)
    assert len(hd.font_strokes("hello", "futural")) == 6
    strokes = hd.font_strokes("in", "cursive")
    dot = strokes[1]
    assert np.ptp(dot, axis=0).max() <= 2 / 21  # the i's dot follows the i's body
    assert dot[:, 1].min() > strokes[0][:, 1].max()  # above the x-height
    assert len(strokes) == 3  # i, its dot, n (whose two legs are one stroke)


def test_clean_drawing_lies_on_the_font_and_round_trips():
    for font in hd.FONTS:
        traj = hd.draw("quick", font)
        strokes = hd.to_points(traj)
        assert traj[:, 2].sum() == len(strokes) == len(hd.font_strokes("quick", font))
        segs = font_segments("quick", font)
        # sampled points are on the font's ink, or on the short joins inside a glyph
        assert np.median(distance_to_segments(np.concatenate(strokes), segs)) < 1e-6
        for got, want in zip(strokes, hd.font_strokes("quick", font), strict=True):
            np.testing.assert_allclose(got[0], want[0], atol=1e-5)  # stroke ends are kept
            np.testing.assert_allclose(got[-1], want[-1], atol=1e-5)
        np.testing.assert_allclose(
            np.cumsum(traj[:, :2], axis=0)[-1] * hd.SCALE, strokes[-1][-1], atol=1e-5
        )


def test_the_pen_slows_down_in_bends():
    line = hd.to_points(hd.draw("l", "futural"))[0]  # a straight line: constant speed
    steps = np.linalg.norm(np.diff(line, axis=0), axis=1)
    np.testing.assert_allclose(steps, steps.mean(), rtol=1e-6)
    assert abs(steps.mean() - hd.SPACING) < 0.2 * hd.SPACING
    # the two-thirds power law: speed ∝ (1 + κ/κ₀)^(−1/3), κ₀ = 2 per em
    theta = np.linspace(0, 2 * np.pi, 400)
    circle = 0.25 * np.stack([np.cos(theta), np.sin(theta)], 1)  # κ = 4 per em
    slow = hd._slowness(hd._densify(circle))
    middle = slice(len(slow) // 4, 3 * len(slow) // 4)
    np.testing.assert_allclose(slow[middle], np.cbrt(1 + 4 / 2), rtol=0.02)
    vee = hd._densify(np.asarray([[0.0, 1.0], [0.3, 0.0], [0.6, 1.0]]))
    slow = hd._slowness(vee)
    assert slow.max() > 2.0 and np.argmax(slow) == np.argmin(vee[:, 1])
    np.testing.assert_allclose(slow[:5], 1.0)  # far from the cusp: full speed


def test_samples_are_deterministic_and_all_different():
    words = ["lstm", "ink"]
    a = hd.dataset(words, 6, seed=3)
    b = hd.dataset(words, 6, seed=3)
    c = hd.dataset(words, 6, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(a.targets, c.targets)
    assert a.words == ["lstm", "ink"] * 3
    assert a.fonts.tolist() == [0, 0, 1, 1, 0, 0]
    first, again = a.targets[0, : a.lengths[0]], a.targets[4, : a.lengths[4]]  # lstm, cursive
    assert len(first) != len(again) or not np.allclose(first, again)
    valid = (np.arange(1, a.inputs.shape[1])[None, :] < a.lengths[:, None])[..., None]
    np.testing.assert_array_equal(a.inputs[:, 1:], np.where(valid, a.targets[:, :-1], 0))
    assert np.all(a.inputs[:, 0] == [0, 0, 1])
    # augmentation distorts the shape but keeps the strokes
    for i in range(6):
        clean = hd.draw(a.words[i], hd.FONTS[a.fonts[i]])
        assert a.targets[i, : a.lengths[i], 2].sum() == clean[:, 2].sum()
    chex.assert_shape(a.chars, (6, 4))
    assert hd.decode_chars(a.chars[1]) == "ink"


def test_augmentation_stays_within_its_ranges():
    rng = np.random.default_rng(0)
    clean = np.concatenate(hd.to_points(hd.draw("handle", "futural")))
    width = np.ptp(clean[:, 0])
    for _ in range(20):
        ink = np.concatenate(hd.to_points(hd.draw("handle", "futural", rng)))
        assert 0.6 * width < np.ptp(ink[:, 0]) < 1.5 * width
        assert np.abs(ink - ink[0]).max() < 2 * width


def test_words_and_the_held_out_split():
    words = hd.corpus_words(2, 8)
    assert len(words) > 1500 and words == sorted(set(words))
    assert all(2 <= len(w) <= 8 and set(w) <= set(hd.ALPHABET) for w in words)
    train, held = hd.split_words(words)
    assert not set(train) & set(held) and len(train) + len(held) == len(words)
    assert len(held) == round(0.1 * len(words))
    assert hd.split_words(list(reversed(words))) == (train, held)  # fixed, order-free


def test_bad_input_is_refused():
    for bad, message in (("", "non-empty"), ("Hello", "outside a–z"), ("a b", "outside a–z")):
        with pytest.raises(ValueError, match=message):
            hd.draw(bad)
    with pytest.raises(ValueError, match="unknown font 'scriptc'"):
        hd.draw("ab", "scriptc")
    with pytest.raises(ValueError, match="at most 3"):
        hd.encode_chars(["abcd"], 3)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        hd.dataset(["ab"], 0, seed=0)


def test_buckets_pad_each_group_to_its_own_length():
    data = hd.dataset(["a", "minimum", "to", "handwrite"], 8, seed=0)
    groups = buckets(data, 2)
    assert sorted(w for g in groups for w in g.words) == sorted(data.words)
    short, long = groups
    assert short.lengths.max() <= long.lengths.min()
    assert short.targets.shape[1] < long.targets.shape[1] == data.targets.shape[1]
    rows = {(w, data.targets[j].tobytes()) for j, w in enumerate(data.words)}
    T = data.targets.shape[1]
    for g in groups:
        padded = np.pad(g.targets, ((0, 0), (0, T - g.targets.shape[1]), (0, 0)))
        assert all((w, padded[i].tobytes()) in rows for i, w in enumerate(g.words))


def test_bucket_batches_draw_buckets_by_size_and_differentiate_one():
    groups = [
        (jnp.zeros((3, 2)), jnp.ones((3,), jnp.int32)),
        (100 + jnp.arange(5.0)[:, None] * jnp.ones((5, 4)), 2 * jnp.ones((5,), jnp.int32)),
    ]

    def loss_on(p, batch):
        x, n = batch
        return p["w"] * x.mean() + jnp.sum(n) * p["w"] ** 2  # the int leaf enters too

    loss = jax.jit(bucket_batches(loss_on, groups, [3, 5], 0, 4))
    p = {"w": jnp.asarray(1.0)}
    values = np.asarray([float(loss(p, groups, t, None)[0]) for t in range(300)])
    mean_x = values - np.where(values == 4.0, 4.0, 8.0)  # Σn = 4 (bucket 0) or 8 (bucket 1)
    assert np.all((mean_x == 0) | ((mean_x >= 100) & (mean_x <= 104)))
    np.testing.assert_allclose(np.mean(mean_x == 0), 3 / 8, atol=0.1)
    again = [float(loss(p, groups, t, None)[0]) for t in range(5)]
    assert again == values[:5].tolist()  # a function of the seed and the step
    assert len(set(values.tolist())) > 10  # batches vary
    grad = jax.jit(jax.grad(lambda p, t: 3.0 * loss(p, groups, t, None)[0]))
    for t in range(6):  # d/dw (w·x̄ + Σn·w²) = x̄ + 2Σn at w = 1, times the cotangent 3
        sum_n = 4.0 if values[t] == 4.0 else 8.0
        np.testing.assert_allclose(float(grad(p, t)["w"]), 3 * (mean_x[t] + 2 * sum_n), rtol=1e-6)


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


def test_sampling_bias_sharpens_the_mixture(rng):
    y = jax.random.normal(rng, (mdn.mixture_size(4),))
    plain, biased = mdn.split_mixture(y), mdn.split_mixture(y, bias=2.0)
    np.testing.assert_allclose(biased.log_sx, plain.log_sx - 2.0, rtol=1e-6)  # σ = exp(σ̂ − b)
    want = jax.nn.log_softmax(3.0 * y[:4])  # π = softmax(π̂ (1 + b))
    np.testing.assert_allclose(biased.log_pi, want, rtol=1e-5, atol=1e-6)


def test_window_cell_unroll_equals_its_steps_and_reads_only_the_text(rng):
    chars = jnp.asarray([[1, 2, 3, 0], [4, 5, 0, 0]])
    lengths = jnp.asarray([3, 2])
    mask = jnp.arange(4)[None, :] < lengths[:, None]
    cell = mdn.window_cell(8, 2, jax.nn.one_hot(chars, 6), mask, kappa_rate=0.1)
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
    # φ(t, u) = Σ_k α_k exp(−β_k (κ_k − u)²) at u = 0..U, from the window's own parameters
    h = np.asarray(ys[:, -1, :8])  # (2, 8) h¹ at the last step
    a, b, _ = np.split(np.exp(h @ np.asarray(params.W_win) + np.asarray(params.b_win)), 3, -1)
    want = np.sum(
        a[..., None]
        * np.exp(-b[..., None] * (np.asarray(carry.kappa)[..., None] - np.arange(5)) ** 2),
        axis=-2,
    )  # (2, 5)
    np.testing.assert_allclose(np.asarray(carry.phi), want, rtol=1e-4)
    w = np.asarray(ys[..., 8:])  # (2, 5, 6): weights only on the characters of each text
    assert np.all(w[0][:, [0, 4, 5]] == 0) and np.all(w[1][:, [0, 1, 2, 3]] == 0)
    assert np.all(np.asarray(carry.kappa) > 0)  # the window only moves forward
    zero = params._replace(W_win=jnp.zeros_like(params.W_win))  # κ̂ = its bias alone
    carry, _ = unroll(cell, zero, xs)
    np.testing.assert_allclose(np.asarray(carry.kappa), 5 * 0.1, rtol=1e-5)  # 0.1 per point


def test_writer_samples_and_gradients(rng):
    model = writer(8, components=2, window=2)
    params = model.init(rng)
    chars, n = hd.encode_chars(["ab", "c"], 3)
    styles = jnp.asarray([0, 1])
    trajs, phi = jax.jit(model.sample, static_argnums=(2, 3))(
        params, rng, 7, 2, jnp.asarray(chars), jnp.asarray(n), styles, 1.0
    )
    chex.assert_shape(trajs, (2, 7, 3))
    chex.assert_shape(phi, (2, 7, 4))  # U + 1 positions
    assert set(np.unique(np.asarray(trajs[..., 2])).tolist()) <= {0.0, 1.0}
    data = hd.dataset(["ab", "c"], 4, seed=0, U=3)
    args = (data.inputs, data.targets, data.lengths, data.chars, data.char_lengths, data.fonts)
    grads = jax.jit(jax.grad(model.nll))(params, *args)
    assert float(jnp.abs(grads.first.W_win).max()) > 0  # the window learns
    assert float(jnp.abs(grads.first.lstm.U[3:5]).max()) > 0  # and so does the style input


def test_cut_synthesis_stops_at_the_first_lift_past_the_text():
    traj = np.zeros((7, 3), np.float32)
    traj[[1, 3, 5, 6], 2] = 1
    phi = np.zeros((7, 4))  # texts of 2 letters: positions 0, 1, then 2 = one past the end
    phi[:, 0] = [1.0, 0.2, 0.2, 0.1, 0.0, 0.0, 0.0]
    phi[:, 1] = [0.1, 0.5, 0.9, 0.6, 0.2, 0.1, 0.0]
    phi[:, 2] = [0.0, 0.9, 0.3, 0.4, 0.9, 0.05, 0.9]  # t = 1: a Gaussian running ahead
    phi[:, 3] = 5.0  # beyond: never looked at for a text of 2 letters
    assert len(cut_synthesis(traj, phi, 2)) == 2  # past the text at the lift t = 1
    phi[1, 2] = 0.0
    assert len(cut_synthesis(traj, phi, 2)) == 7  # past at t = 4 (no lift), not at the lift t = 5
    phi[5, 2] = 0.8
    assert len(cut_synthesis(traj, phi, 2)) == 6
    assert len(cut_synthesis(traj, phi * [1, 1, 0, 0], 2)) == 7  # never: whole


@pytest.fixture(scope="module")
def tiny_recogniser(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "run"
    losses, result = run_tiny(
        "handwriting_recognition",
        out,
        steps=20,
        hidden=8,
        layers=1,
        batch_size=8,
        samples=48,
        max_letters=3,
        eval_samples=1,
        buckets=1,
        beam=2,
        lr=1e-2,
    )
    return out, losses, result


def test_recognition_application_trains_and_reports_cer(tiny_recogniser):
    out, losses, result = tiny_recogniser
    assert len(losses) == 2 and losses[-1] < losses[0]
    ev = result["evaluation"]
    for key in ("cer_greedy", "cer_beam", "cer_cursive", "cer_futural", "cer_font_renderings"):
        assert ev[key] >= 0 and np.isfinite(ev[key])
    assert ev["held_out_samples"] == 2 * ev["held_out_words"]
    assert result["target"] == {
        "metric": "cer_greedy",
        "threshold": 0.05,
        "direction": "at most",
        "met": ev["cer_greedy"] <= 0.05,
    }
    assert (out / "recogniser.npz").is_file()


@pytest.mark.slow
def test_synthesis_application_trains_and_renders(tiny_recogniser, tmp_path):
    out = tmp_path / "hw"
    _, result = run_tiny(
        "handwriting",
        out,
        steps=20,
        unconditional_steps=20,
        buckets=1,
        hidden=16,
        batch_size=8,
        components=3,
        window=2,
        samples=48,
        max_letters=3,
        legibility_words=6,
        recogniser=tiny_recogniser[0],
        texts=["ab", "to"],
        lr=1e-2,
    )
    for model in ("synthesis", "unconditional"):  # each model has its own run directory
        records = read_metrics(out / model / "metrics.jsonl")
        losses = [r["loss"] for r in records if "loss" in r]
        assert losses[-1] < losses[0], model
    ev = result["evaluation"]
    assert np.isfinite(ev["val_nll_per_point_unconditional"])
    assert np.isfinite(ev["val_nll_per_point_synthesis"])
    assert ev["legibility_words"] == 6 and ev["cer_synthesis"] >= 0
    assert set(ev["cer_synthesis_by_bias"]) == {"0.0", "0.5", "2.0"}
    assert result["target"]["metric"] == "cer_synthesis"
    assert (out / "handwriting_samples.png").stat().st_size > 1000


def test_synthesis_flags_are_checked(tmp_path):
    from rnnjax.models.registry import run_application

    base = ["--task", "handwriting", "--out", str(tmp_path / "x")]
    for flags, message in (
        (["--recogniser", str(tmp_path)], "has no recogniser.npz"),
        (["--texts", "Hi"], "outside a–z"),
        (["--max-letters", "3", "--texts", "abcd"], "at most --max-letters=3"),
        (["--bias", "-1"], "--bias must be >= 0"),
        (["--window", "0"], "--window must be a positive integer"),
    ):
        with pytest.raises(ValueError, match=message):
            run_application(base + flags)
    assert not (tmp_path / "x").exists()
