"""Machine translation, the lecture's first application: English number words → Russian.

"three hundred and twelve" → "триста двенадцать", pairs generated with the ``num2words``
package. The task is small but real translation: different word order at the thousands
("twenty-one thousand" → "двадцать одна тысяча"), agreement in gender ("one" → "один" /
"одна") and number ("тысяча" / "тысячи" / "тысяч"), and words that merge (``"three hundred"``
→ ``"триста"``). The split is by number: the test numbers never occur in training.

Model: the `rnnjax.models.seq2seq` LSTM encoder–decoder (reversed source, ``<EOS>``, teacher
forcing), decoded greedily and with beam search; scored by exact match and corpus BLEU.

Command::

    rnnjax train --task translate --steps 600 --out runs/translate
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.models.decoding import corpus_bleu
from rnnjax.models.seq2seq import Seq2SeqBatch, WordVocab, pad_pairs, seq2seq
from rnnjax.models.training import (
    add_common_arguments,
    check_common,
    fit,
    shard_batch,
    write_result,
)

TARGET = {"metric": "exact_match_greedy", "threshold": 0.95}
SPLIT_SEED = 1234  # the train/test split of the numbers is fixed, whatever --seed is


def english(n: int) -> list[str]:
    """English number words, tokenised: "twenty-one" → ["twenty", "-", "one"], commas dropped."""
    from num2words import num2words

    return num2words(n, lang="en").replace("-", " - ").replace(",", "").split()


def russian(n: int) -> list[str]:
    """Russian number words: 21000 → ["двадцать", "одна", "тысяча"]."""
    from num2words import num2words

    return num2words(n, lang="ru").split()


def split_numbers(
    max_digits: int, n_train: int, n_test: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Disjoint train and test numbers, per number of digits d = 1..max_digits.

    Numbers of every length are equally represented (uniform numbers up to 999,999 would be
    90 % six-digit ones): bucket d holds [10^(d−1), 10^d) (0 joins d = 1); at most a fifth of
    a bucket, and ``n_test / max_digits`` numbers, go to test; up to ``n_train / max_digits``
    of the rest go to training. The split is a fixed permutation, whatever the run's seed.

    Returns:
        ``(train, test)``: one int array of numbers per bucket each.
    """
    if not 1 <= max_digits <= 9 or n_train < max_digits or n_test < max_digits:
        raise ValueError(
            f"need 1 <= max_digits <= 9 and at least one train and test number per digit count, "
            f"got {max_digits=}, {n_train=}, {n_test=}"
        )
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for d in range(1, max_digits + 1):
        bucket = rng.permutation(np.arange(0 if d == 1 else 10 ** (d - 1), 10**d))
        k = min(n_test // max_digits, len(bucket) // 5)
        test.append(bucket[:k])
        train.append(bucket[k : k + n_train // max_digits])
    return train, test


class TranslationData:
    """Tokenised, padded train and test pairs and their vocabularies.

    Attributes:
        train: `Seq2SeqBatch` of all training pairs, bucket after bucket.
        bucket_start, bucket_size: int32 (max_digits,): where each digit count's training
            pairs lie in ``train`` (batches draw a bucket uniformly, then a pair in it).
        test_numbers, test_digits: the held-out numbers and their digit counts.
        test_src, test_tgt: their English and Russian words.
    """

    def __init__(self, max_digits: int, n_train: int, n_test: int):
        train_b, test_b = split_numbers(max_digits, n_train, n_test)
        train_n = np.concatenate(train_b)
        self.bucket_size = np.asarray([len(b) for b in train_b], np.int32)
        self.bucket_start = np.concatenate([[0], np.cumsum(self.bucket_size)[:-1]]).astype(np.int32)
        self.test_numbers = np.concatenate(test_b)
        self.test_digits = np.concatenate([np.full(len(b), d + 1) for d, b in enumerate(test_b)])
        train_src, train_tgt = (
            [english(int(n)) for n in train_n],
            [russian(int(n)) for n in train_n],
        )
        self.test_src = [english(int(n)) for n in self.test_numbers]
        self.test_tgt = [russian(int(n)) for n in self.test_numbers]
        self.src_vocab = WordVocab.build(train_src + self.test_src)
        self.tgt_vocab = WordVocab.build(train_tgt + self.test_tgt)
        self.src_len = max(len(s) for s in train_src + self.test_src)
        self.tgt_len = max(len(t) for t in train_tgt + self.test_tgt) + 1
        self.train = self._pad(train_src, train_tgt)

    def _pad(self, src, tgt) -> Seq2SeqBatch:
        return pad_pairs(
            [self.src_vocab.encode(s) for s in src],
            [self.tgt_vocab.encode(t) for t in tgt],
            self.src_len,
            self.tgt_len,
        )

    def batch_indices(self, seed: int, step, batch_size: int):
        """Batch ``step``: a digit count drawn uniformly, then a training pair of that count."""
        key = jax.random.fold_in(jax.random.key(seed), step)
        k_bucket, k_pair = jax.random.split(key)
        bucket = jax.random.randint(k_bucket, (batch_size,), 0, len(self.bucket_size))  # (B,)
        u = jax.random.uniform(k_pair, (batch_size,))  # (B,)
        offset = (u * jnp.asarray(self.bucket_size)[bucket]).astype(jnp.int32)  # (B,)
        return jnp.asarray(self.bucket_start)[bucket] + offset  # (B,)


def translate(model, params, data: TranslationData, sentences: list[list[str]], beam_size=1):
    """Translates tokenised English sentences (ValueError for an empty or unknown sentence)."""
    for s in sentences:
        if not s:
            raise ValueError("cannot translate an empty sentence")
    ids = [data.src_vocab.encode(s) for s in sentences]
    batch = pad_pairs(ids, [[]] * len(ids), max(data.src_len, *map(len, ids)), data.tgt_len)
    decode = jax.jit(model.decode, static_argnames=("max_len", "beam_size"))
    tokens, _ = decode(params, batch.src, batch.src_len, max_len=data.tgt_len, beam_size=beam_size)
    return [data.tgt_vocab.decode(t) for t in np.asarray(tokens)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, steps=600, batch_size=128, lr=3e-3, hidden=256)
    parser.add_argument("--max-digits", type=int, default=6, help="numbers below 10^D (6)")
    parser.add_argument("--train-size", type=int, default=60_000, help="training numbers")
    parser.add_argument("--test-size", type=int, default=2400, help="held-out numbers (max)")
    parser.add_argument("--embed", type=int, default=64, help="word vector size (64)")
    parser.add_argument("--beam", type=int, default=4, help="beam size for the beam score (4)")


def evaluate(model, params, data: TranslationData, beam: int) -> dict[str, Any]:
    """Exact match (overall and per digit count) and BLEU of greedy and beam decoding."""
    digits = [str(d) for d in np.unique(data.test_digits)]
    result: dict[str, Any] = {
        "test_numbers": len(data.test_numbers),
        "test_numbers_by_digits": {d: int(np.sum(data.test_digits == int(d))) for d in digits},
        "beam_size": beam,
    }
    for name, k in (("greedy", 1), ("beam", beam)):
        t0 = time.perf_counter()
        hyps = translate(model, params, data, data.test_src, beam_size=k)
        correct = np.asarray([h == r for h, r in zip(hyps, data.test_tgt, strict=True)])
        result[f"exact_match_{name}"] = float(np.mean(correct))
        result[f"exact_match_{name}_by_digits"] = {
            d: float(np.mean(correct[data.test_digits == int(d)])) for d in digits
        }
        result[f"bleu_{name}"] = corpus_bleu(data.test_tgt, hyps)
        result[f"decode_s_{name}"] = round(time.perf_counter() - t0, 2)
        if name == "greedy":
            firsts = [int(np.argmax(data.test_digits == int(d))) for d in digits]
            wrong = np.flatnonzero(~correct)[:8].tolist()
            for field, rows in (("samples", firsts), ("errors", wrong)):
                result[field] = [
                    {
                        "english": " ".join(data.test_src[i]),
                        "reference": " ".join(data.test_tgt[i]),
                        "greedy": " ".join(hyps[i]),
                    }
                    for i in rows
                ]
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and evaluates; writes OUT/metrics.jsonl and OUT/result.json."""
    check_common(args)
    if args.beam < 1:
        raise ValueError(f"--beam must be ≥ 1, got {args.beam}")
    data = TranslationData(args.max_digits, args.train_size, args.test_size)
    model = seq2seq(len(data.src_vocab), len(data.tgt_vocab), embed=args.embed, hidden=args.hidden)
    params = model.init(jax.random.key(args.seed))

    def loss(params, train: Seq2SeqBatch, step, key):
        idx = shard_batch(data.batch_indices(args.seed, step, args.batch_size))  # (B,)
        value, accuracy = model.loss(params, jax.tree.map(lambda a: a[idx], train))
        return value, {"token_accuracy": accuracy}

    params, training = fit(loss, params, data.train, args, label="translate")
    evaluation = evaluate(model, params, data, args.beam)
    if args.max_digits >= 3:  # the example of the issue, when the run has its words
        evaluation["example"] = {
            "english": " ".join(english(312)),
            "greedy": " ".join(translate(model, params, data, [english(312)])[0]),
        }
    return write_result(args, "translate", training, evaluation, TARGET)


__all__ = ["TranslationData", "add_arguments", "english", "run", "russian", "translate"]
