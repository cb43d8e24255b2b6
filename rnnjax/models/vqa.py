"""Visual question answering: a convnet sees the scene, an LSTM reads the question and answers.

The lecture: "question answering with images also — how/where to add the image? What has been
working so far is to add the image only in the beginning." Scenes are rows of coloured
handwritten digits with generated questions (`rnnjax.models.vqa_data`)::

    [7 red][2 blue][7 yellow]   what colour is the digit left of the two ?   →   red

Model (flax.nnx): two 3×3 convolutions and 2×2 average pooling give the image features
f ∈ R^F (F = 4·18·32); one rnnjax LSTM (`rnnjax.flax.RNN`) reads the question's word
vectors E[q_t] and then writes the answer words and ``<EOS>`` (teacher forcing in training,
greedy decoding at test time), p(a_{k+1} | a_{≤k}, q, image) = softmax(h_t V + b). Where the
image enters is ``--image``, with v = LayerNorm(W f + b) ∈ R^E on the scale of the word vectors:

- ``first`` (the lecture's recipe; Ren, Kiros & Zemel's VIS+LSTM): x_0 = v, then x_t = E[w_t];
- ``every`` (Malinowski, Rohrbach & Fritz's "Ask your neurons"): x_t = [E[w_t]; v] at every
  step;
- ``state``: also only in the beginning, as the initial state rather than an input:
  h_0 = tanh(W_h f + b_h), c_0 = W_c f + b_c (as Xu et al.'s caption decoder starts from
  the image), then x_t = E[w_t];
- ``none``: x_t = E[w_t], the question alone — the baseline that shows how much of the answer
  the question's wording gives away.

Training has a long plateau near half of the answers right while the six question types pull
against each other (one type alone is learned in about 1000 steps); the default 20000-step
schedule gets through it: with the image as the initial state, 81 % of training answers at
step 4000, 100 % at 20,000, and 88.9 % on held-out digit images — the 1348 training digits are
fitted, new ones are the gap. ``--augment`` (`vqa_data.jitter`: each training digit tile moved
by up to a pixel and dimmed at random, anew at every step) closes most of it: 91.0 % held out
with the image as the initial state, 86.1 % at every step (81.4 % without;
`benchmarks/results/applications.md`).

Commands::

    rnnjax train --task vqa --out runs/vqa                    # image at the first step
    rnnjax train --task vqa --image every --out runs/vqa-every
    rnnjax train --task vqa --image state --out runs/vqa-state
    rnnjax train --task vqa --image state --augment --out runs/vqa-best   # the best: 91.0 %
    rnnjax train --task vqa --image none --out runs/vqa-blind

References:
    Ren, Kiros & Zemel, "Exploring models and data for image question answering", NeurIPS 2015.
    Malinowski, Rohrbach & Fritz, "Ask your neurons: a neural-based approach to answering
    questions about images", ICCV 2015.
    Antol et al., "VQA: visual question answering", ICCV 2015 (question-only baselines).
    Xu et al., "Show, attend and tell: neural image caption generation with visual attention",
    ICML 2015 (h_0 and c_0 predicted from the image).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.cells import lstm
from rnnjax.cells.base import Array
from rnnjax.flax import RNN
from rnnjax.losses import sequence_cross_entropy
from rnnjax.models import vqa_data as vd
from rnnjax.models.decoding import greedy_search
from rnnjax.models.seq2seq import EOS, PAD
from rnnjax.models.training import (
    add_common_arguments,
    batch_indices,
    check_common,
    fit,
    write_result,
)

TARGET = {"metric": "exact_answer", "threshold": 0.90}
TRAIN_SEED, TEST_SEED = 1, 2  # the data do not depend on --seed (which seeds init and batches)
IMAGE_MODES = ("first", "every", "state", "none")
IMAGE_SHAPE = (vd.HEIGHT, vd.WIDTH, 3)


class VQAModel(nnx.Module):
    """Convnet image encoder + one rnnjax LSTM that reads the question and writes the answer.

    Args:
        image: where the image enters the LSTM: "first", "every", "state" or "none".
        embed: E, the size of the image vector and of the word vectors.
        hidden: H, the LSTM units.
        rngs: ``nnx.Rngs``.
        channels: channels of the two convolutions.
        forget_bias: the LSTM's initial b⁽ᶠ⁾; the image read at the first step must outlast
            the question (σ(3) ≈ 0.95 per step keeps most of it through ten words at the start).
    """

    def __init__(
        self,
        image: str,
        embed: int,
        hidden: int,
        *,
        rngs: nnx.Rngs,
        channels=(16, 32),
        forget_bias: float = 3.0,
    ):
        if image not in IMAGE_MODES:
            raise ValueError(f"image must be one of {IMAGE_MODES}, got {image=}")
        self.image = image
        c1, c2 = channels
        features = (vd.HEIGHT // 2) * (vd.WIDTH // 2) * c2
        if image != "none":
            self.conv1 = nnx.Conv(3, c1, (3, 3), padding="SAME", rngs=rngs)
            self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", rngs=rngs)
        if image in ("first", "every"):
            self.project = nnx.Linear(features, embed, rngs=rngs)
            self.norm = nnx.LayerNorm(embed, rngs=rngs)
        if image == "state":
            self.to_carry = nnx.Linear(features, 2 * hidden, rngs=rngs)
        self.embed = nnx.Embed(len(vd.VOCAB), embed, rngs=rngs)
        size = 2 * embed if image == "every" else embed
        self.rnn = RNN(lstm(hidden, forget_bias=forget_bias), input_size=size, rngs=rngs)
        self.out = nnx.Linear(hidden, len(vd.VOCAB), rngs=rngs)

    def features(self, images: Array) -> Array:
        """(B, 8, 36, 3) images → (B, F) image features f: two 3×3 convolutions, 2×2 average
        pooling, flattened."""
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(images))))  # (B, 8, 36, C2)
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))  # (B, 4, 18, C2)
        return x.reshape(x.shape[0], -1)  # (B, F)

    def encode(self, images: Array) -> Array:
        """(B, 8, 36, 3) images → the image vector v = LayerNorm(W f + b) (B, E) that enters
        as an input ("first", "every"); (B, 2H) = [h_0; c_0] for "state"; (B, 0) for "none"."""
        if self.image == "none":
            return jnp.zeros((images.shape[0], 0), jnp.float32)
        f = self.features(images)  # (B, F)
        if self.image == "state":
            return self.to_carry(f)  # (B, 2H)
        return self.norm(self.project(f))  # (B, E)

    def _carry(self, v: Array) -> Any:
        """The LSTM's initial carry: (h_0, c_0) = (tanh(W_h f), W_c f) for "state", else zero."""
        if self.image != "state":
            return None
        h0, c0 = jnp.split(v, 2, axis=-1)  # (B, H) each
        return self.rnn.initial_carry((v.shape[0],))._replace(h=jnp.tanh(h0), c=c0)

    def _inputs(self, v: Array, words: Array) -> Array:
        """The LSTM's inputs for word vectors (B, T, E): with v prepended, appended or not."""
        if self.image == "first":
            return jnp.concatenate([v[:, None, :], words], axis=1)  # (B, 1 + T, E)
        if self.image == "every":
            v_t = jnp.broadcast_to(v[:, None, :], words.shape)  # (B, T, E)
            return jnp.concatenate([words, v_t], axis=-1)  # (B, T, 2E)
        return words  # (B, T, E)

    def __call__(self, images: Array, text: Array) -> Array:
        """Teacher forcing: log-probabilities (B, L − 1, V) of text[:, 1:] given text[:, :-1]
        (the question, then the answer) and the image; the loss uses the answer positions."""
        v = self.encode(images)  # (B, E), (B, 2H) or (B, 0)
        hs = self.rnn(self._inputs(v, self.embed(text[:, :-1])), self._carry(v))[1]
        if self.image == "first":
            hs = hs[:, 1:]  # (B, L − 1, H): the image step predicts nothing
        return jax.nn.log_softmax(self.out(hs), axis=-1)

    def start(self, images: Array, question: Array, question_len: Array) -> tuple[Any, Array]:
        """Reads the image and the padded question (B, Lq) of ``question_len`` words (B,):
        ``((carry, v), log_probs (B, V) of the first answer word)``."""
        v = self.encode(images)  # (B, E), (B, 2H) or (B, 0)
        lengths = question_len + (self.image == "first")  # (B,)
        words = self.embed(question)  # (B, Lq, E)
        carry, hs = self.rnn(self._inputs(v, words), self._carry(v), lengths=lengths)
        h = jnp.take_along_axis(hs, (lengths - 1)[:, None, None], axis=1)[:, 0]  # (B, H)
        return (carry, v), jax.nn.log_softmax(self.out(h), axis=-1)

    def step(self, state: tuple[Any, Array], token: Array) -> tuple[Any, Array]:
        """One answer step on a word id (B,): ``((carry, v), log_probs (B, V))``."""
        carry, v = state
        x = self.embed(token)  # (B, E)
        if self.image == "every":
            x = jnp.concatenate([x, v], axis=-1)  # (B, 2E)
        carry, h = self.rnn.step(carry, x)
        return (carry, v), jax.nn.log_softmax(self.out(h), axis=-1)

    def answer(self, images: Array, question: Array, question_len: Array) -> Array:
        """Greedy answer ids (B, ANSWER_LEN): words, ``<EOS>``, PAD."""
        state, log_probs = self.start(images, question, question_len)
        return greedy_search(self.step, state, log_probs, max_len=vd.ANSWER_LEN, eos=EOS)[0]


def _answer_fn(model: VQAModel):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, images, question, question_len):
        return nnx.merge(graphdef, state).answer(images, question, question_len)

    return lambda *arrays: run(state, *arrays)


def accuracy_by_kind(right: Array, kind: Array) -> dict[str, Array]:
    """Training accuracy of a batch by question type: right and kind (B,) → one mean per type
    (0 for a type the batch lacks: at 64 questions of six types, one batch in 10⁵)."""
    metrics = {}
    for i, name in enumerate(vd.KINDS):
        of_kind = kind == i  # (B,)
        n = jnp.sum(of_kind)
        metrics[f"answer_accuracy_{name}"] = jnp.sum(right & of_kind) / jnp.maximum(n, 1)
    return metrics


def encode_questions(questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Questions as padded ids (B, QUESTION_LEN) and lengths (B,) (ValueError for unknown
    words, an empty question or one longer than QUESTION_LEN words)."""
    ids = np.full((len(questions), vd.QUESTION_LEN), PAD, np.int32)
    lengths = np.zeros((len(questions),), np.int32)
    for i, question in enumerate(questions):
        words = question.lower().replace("?", " ?").split()
        if not 1 <= len(words) <= vd.QUESTION_LEN:
            raise ValueError(
                f"a question has 1 to {vd.QUESTION_LEN} words, got {len(words)}: {question!r}"
            )
        ids[i, : len(words)] = vd.VOCAB.encode(words)
        lengths[i] = len(words)
    return ids, lengths


def answer_questions(model: VQAModel, images: Any, questions: list[str]) -> list[str]:
    """Answers one question per image: images float (B, 8, 36, 3) in [0, 1] (or one image).

    Raises:
        ValueError: a wrong image shape or dtype, as many questions as images not given, or a
            question the vocabulary cannot read.
    """
    images = jnp.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be (B, {vd.HEIGHT}, {vd.WIDTH}, 3), got {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be float in [0, 1], got {images.dtype=}")
    if len(questions) != images.shape[0]:
        raise ValueError(f"need one question per image, got {len(questions)} for {len(images)}")
    ids, lengths = encode_questions(questions)
    tokens = _answer_fn(model)(images, jnp.asarray(ids), jnp.asarray(lengths))
    return [" ".join(vd.VOCAB.decode(t)) for t in np.asarray(tokens)]


def evaluate(model: VQAModel, pool: np.ndarray, test: vd.Scenes, chunk: int = 1000) -> dict:
    """Exact answers on the test scenes, overall and by question type, and samples."""
    answer = _answer_fn(model)
    guesses: list[str] = []
    for lo in range(0, len(test.kind), chunk):
        part = vd.Scenes(*(jnp.asarray(a[lo : lo + chunk]) for a in test))
        images = vd.render(jnp.asarray(pool), part.ids, part.colours, part.count, part.shift)
        question = part.text[:, : vd.QUESTION_LEN]
        tokens = answer(images, question, part.question_len)
        guesses += [" ".join(vd.VOCAB.decode(t)) for t in np.asarray(tokens)]
    truth = [vd.answer_words(t, q) for t, q in zip(test.text, test.question_len, strict=True)]
    correct = np.asarray([g == t for g, t in zip(guesses, truth, strict=True)])
    by_kind = {
        k: float(correct[test.kind == i].mean())
        for i, k in enumerate(vd.KINDS)
        if np.any(test.kind == i)
    }
    samples = [
        {
            "question": vd.question_words(test.text[i], test.question_len[i]),
            "answer": guesses[i],
            "truth": truth[i],
        }
        for i in range(8)
    ]
    return {
        "test_questions": len(truth),
        "exact_answer": float(correct.mean()),
        "exact_answer_by_kind": by_kind,
        "samples": samples,
    }


def render_samples(path: Path, images: np.ndarray, samples: list[dict]) -> None:
    """A PNG of test scenes with their questions, the model's answers and the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 1, figsize=(5.0, 1.15 * len(samples)))
    for ax, image, s in zip(np.atleast_1d(axes), images, samples, strict=True):
        ax.imshow(image, vmin=0, vmax=1)
        right = s["answer"] == s["truth"]
        ax.set_title(
            f"{s['question']}  →  {s['answer'] or '(nothing)'}"
            + ("" if right else f"  (true: {s['truth']})"),
            fontsize=8,
            color="black" if right else "red",
        )
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=20000, batch_size=64, lr=2e-3, hidden=256)
    parser.add_argument(
        "--image", choices=IMAGE_MODES, default="first", help="where the image enters (first)"
    )
    parser.add_argument("--embed", type=int, default=64, help="image/word vector size (64)")
    parser.add_argument("--forget-bias", type=float, default=3.0, help="initial LSTM b_f (3)")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=vd.KINDS,
        default=list(vd.KINDS),
        help="question types to train and test on (all)",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="move each training digit by up to a pixel and dim it at random (off)",
    )
    parser.add_argument("--train-size", type=int, default=100_000, help="training questions")
    parser.add_argument("--test-size", type=int, default=3000, help="held-out questions")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and evaluates; writes metrics.jsonl, result.json and vqa_samples.png."""
    check_common(args)
    if args.train_size < 1 or args.test_size < 1 or args.embed < 1:
        raise ValueError(
            f"need positive sizes, got {args.train_size=}, {args.test_size=}, {args.embed=}"
        )
    (train_x, train_y), (test_x, test_y) = vd.load_pools()
    train = vd.make_scenes(TRAIN_SEED, args.train_size, train_y, args.kinds)
    test = vd.make_scenes(TEST_SEED, args.test_size, test_y, args.kinds)
    model = VQAModel(
        args.image,
        args.embed,
        args.hidden,
        rngs=nnx.Rngs(args.seed),
        forget_bias=args.forget_bias,
    )
    graphdef, state = nnx.split(model)
    L = train.text.shape[1] - 1

    def loss(state, data, step, key):
        pool, scenes = data
        idx = batch_indices(args.seed, step, args.train_size, args.batch_size)  # (B,)
        s = jax.tree.map(lambda a: a[idx], scenes)
        augment = key if args.augment else None
        images = vd.render(pool, s.ids, s.colours, s.count, s.shift, augment)  # (B, 8, 36, 3)
        log_probs = nnx.merge(graphdef, state)(images, s.text)  # (B, L, V)
        target = s.text[:, 1:]  # (B, L)
        mask = (jnp.arange(L)[None, :] >= s.question_len[:, None] - 1) & (target != PAD)
        right = jnp.all((jnp.argmax(log_probs, -1) == target) | ~mask, axis=-1)  # (B,)
        value = sequence_cross_entropy(log_probs, target, mask)
        return value, {"answer_accuracy": jnp.mean(right), **accuracy_by_kind(right, s.kind)}

    data = (jnp.asarray(train_x), jax.tree.map(jnp.asarray, train))
    label = f"vqa ({args.image})"
    state, training = fit(loss, state, data, args, label=label, random=args.augment)
    nnx.update(model, state)
    evaluation: dict[str, Any] = {"image": args.image, "augment": args.augment}
    evaluation["test_digit_images"] = len(test_y)
    evaluation.update(evaluate(model, test_x, test))
    figure = Path(args.out) / "vqa_samples.png"
    first = jax.tree.map(lambda a: jnp.asarray(a[:8]), test)
    images = vd.render(jnp.asarray(test_x), first.ids, first.colours, first.count, first.shift)
    render_samples(figure, np.asarray(images), evaluation["samples"])
    evaluation["figure"] = str(figure)
    return write_result(args, "vqa", training, evaluation, TARGET)


__all__ = [
    "IMAGE_MODES",
    "VQAModel",
    "add_arguments",
    "answer_questions",
    "encode_questions",
    "evaluate",
    "run",
]
