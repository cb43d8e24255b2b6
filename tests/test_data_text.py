"""Character-level text: corpus loading and its failure modes, vocabulary, split, BPTT streams."""

import numpy as np
import pytest

from rnnjax.data import (
    bptt_window,
    build_vocab,
    default_corpus,
    load_corpus,
    num_windows,
    prepare_text,
    split_text,
)


def test_default_corpus_is_embedded_prose():
    """The help topics of the running Python, in sorted order of their names: the size
    differs between Python versions, the construction does not."""
    from pydoc_data import topics

    text = load_corpus("default")
    assert text == default_corpus()
    pieces = [topics.topics[name] for name in sorted(topics.topics)]
    position = 0
    for piece in pieces:  # each topic whole, in order, separated by one blank line
        assert text.startswith(piece, position)
        position += len(piece) + 2
    assert position - 2 == len(text)
    assert len(text) > 100_000  # enough for a character-level model (~465 k in CPython 3.11)
    assert "the" in text and "def " in text


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "is empty"),
        (b" \n\t ", "is empty"),
        (b"abc\x00def" * 10, "looks binary"),
        ("café".encode("latin-1") * 10, "not valid UTF-8"),
    ],
)
def test_bad_corpus_files(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_corpus(str(path))


def test_missing_corpus_and_directory(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="not a regular file"):
        load_corpus(str(tmp_path))


def test_utf8_corpus_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("naïve café — ∂c/∂t\n", encoding="utf-8")
    assert load_corpus(str(path)) == "naïve café — ∂c/∂t\n"


def test_vocab_roundtrip_and_unknown_characters():
    text = "hello, wörld"
    vocab = build_vocab(text)
    assert vocab.chars == "".join(sorted(set(text)))
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and vocab.decode(ids) == text
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("hello!")


def test_split_keeps_everything_in_order():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text and len(val) == 100
    with pytest.raises(ValueError, match="val_fraction"):
        split_text(text, 1.0)


def test_streams_are_contiguous_across_windows():
    """Window k + 1 of each row starts where window k ended: the carry can flow between them."""
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefgh"), size=5000))
    B, W = 4, 16
    data = prepare_text(text, batch_size=B, window=W, val_fraction=0.1)
    streams = data.train
    N = streams.shape[1]
    assert streams.shape == (B, len(split_text(text, 0.1)[0]) // B)
    # row r is the r-th contiguous slice of the training text
    train_ids = data.vocab.encode(split_text(text, 0.1)[0])
    for r in range(B):
        np.testing.assert_array_equal(streams[r], train_ids[r * N : (r + 1) * N])
    n = num_windows(streams, W)
    inputs = [np.asarray(bptt_window(streams, k, W)[0]) for k in range(n)]
    targets = [np.asarray(bptt_window(streams, k, W)[1]) for k in range(n)]
    np.testing.assert_array_equal(np.concatenate(inputs, axis=1), streams[:, : n * W])
    np.testing.assert_array_equal(np.concatenate(targets, axis=1), streams[:, 1 : n * W + 1])
    for k in range(n - 1):  # the next input is the last target of the previous window
        np.testing.assert_array_equal(inputs[k + 1][:, 0], targets[k][:, -1])


def test_corpus_shorter_than_one_batch_window():
    with pytest.raises(ValueError, match="shorter than one batch window"):
        prepare_text("x" * 500, batch_size=32, window=64)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        prepare_text("x" * 500, batch_size=2, window=0)
