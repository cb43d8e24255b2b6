"""Captioning: the composed images, the nnx model, a few training steps, bad images."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_models_seq2seq import run_tiny

from rnnjax.models import caption as cap
from rnnjax.models.seq2seq import EOS, PAD


def test_compositions_hold_the_captioned_digits(rng):
    (images, labels), (_, test_labels) = cap.load_digit_pools()
    assert images.shape[1:] == (8, 8) and len(labels) + len(test_labels) == 1797
    canvas, captions = jax.jit(cap.compose, static_argnums=3)(
        rng, jnp.asarray(images), jnp.asarray(labels), 16
    )
    chex.assert_shape(canvas, (16, 8, 36))
    chex.assert_shape(captions, (16, 5))
    canvas, captions = np.asarray(canvas), np.asarray(captions)
    for image, caption in zip(canvas, captions, strict=True):
        n = caption.tolist().index(EOS)
        assert 2 <= n <= 4 and set(caption[n + 1 :].tolist()) <= {PAD}
        digits = [cap.DIGIT_WORDS.index(w) for w in cap.VOCAB.decode(caption)]

        def holds_digits_at(shift, image=image, n=n, digits=digits):  # tile k: a pool digit k
            outside = np.concatenate([image[:, :shift], image[:, shift + 8 * n :]], axis=1)
            tiles = [image[:, shift + 8 * k : shift + 8 * k + 8] for k in range(n)]
            return outside.sum() == 0 and all(
                np.abs(images[labels == d] - t[None]).max(axis=(1, 2)).min() < 1e-6
                for d, t in zip(digits, tiles, strict=True)
            )

        assert any(holds_digits_at(s) for s in range(36 - 8 * n + 1))


def test_image_enters_only_at_the_first_step(rng):
    """Changing the image changes the first step's output; words alone drive later inputs."""
    model = cap.Captioner(8, 16, rngs=nnx.Rngs(0))
    images = jax.random.uniform(rng, (2, 8, 36))
    captions = jnp.asarray([[3, 4, EOS, PAD, PAD]] * 2)
    log_probs = model(images, captions)
    chex.assert_shape(log_probs, (2, 5, len(cap.VOCAB)))
    carry, first = model.start(images)
    chex.assert_trees_all_close(first, log_probs[:, 0], rtol=1e-5, atol=1e-6)
    _, second = model.step(carry, captions[:, 0])
    chex.assert_trees_all_close(second, log_probs[:, 1], rtol=1e-5, atol=1e-6)
    assert len(cap.caption_words(model, images)) == 2
    assert len(cap.caption_words(model, images[0], beam_size=2)) == 1


def test_wrong_images_are_refused():
    model = cap.Captioner(8, 16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"images must be \(B, 8, 36\).*\(2, 8, 32\)"):
        cap.caption_words(model, np.zeros((2, 8, 32), np.float32))
    with pytest.raises(ValueError, match="must be float"):
        cap.caption_words(model, np.zeros((1, 8, 36), np.int32))


@pytest.mark.slow
def test_caption_learns_held_out_digits_and_writes_its_figure(tmp_path):
    """1500 Adam steps caption held-out compositions of unseen digit images: most
    words right where chance is 1 in 10 (measured: 0.80 of the words, 0.66 of the captions)."""
    out = tmp_path / "cap"
    losses, result = run_tiny(
        "caption",
        out,
        steps=1500,
        hidden=64,
        embed=32,
        batch_size=32,
        lr=3e-3,
        test_size=100,
        beam=2,
    )
    assert losses[-1] < 0.3 * losses[0]
    ev = result["evaluation"]
    assert ev["digit_accuracy"] >= 0.5, ev  # chance: 0.1
    assert ev["exact_caption"] >= 0.4 and ev["exact_caption_beam"] >= 0.4, ev  # chance < 0.01
    assert ev["exact_caption"] <= ev["digit_accuracy"]  # an exact caption has every word right
    right = [s["truth"] == s["caption"] for s in ev["samples"]]
    assert len(right) == 8 and any(right)
    from matplotlib.image import imread

    pixels = imread(out / "caption_samples.png")  # 8 panels of 4.5 × 1 inch at 110 dpi
    assert pixels.shape[:2] == (880, 495)
    rgb = pixels[..., :3]
    assert np.mean(rgb < 0.5) > 0.01 and len(np.unique(np.round(rgb, 2))) > 10  # not blank
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)  # wrong captions
    assert bool(np.any(red)) == (not all(right))
    assert result["target"]["metric"] == "exact_caption"
