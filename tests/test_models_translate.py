"""Translation: the number pairs, the split by number, a few training steps, the decoders."""

import jax
import numpy as np
import pytest
from test_models_seq2seq import run_tiny

from rnnjax.models.seq2seq import seq2seq
from rnnjax.models.translate import TranslationData, english, russian, split_numbers, translate


def test_pairs_come_from_num2words():
    assert english(312) == ["three", "hundred", "and", "twelve"]
    assert russian(312) == ["триста", "двенадцать"]
    assert english(21_000) == ["twenty", "-", "one", "thousand"]
    assert russian(21_000) == ["двадцать", "одна", "тысяча"]


def test_split_by_number_is_disjoint_and_covers_every_length():
    train, test = split_numbers(4, 400, 40)
    train_all, test_all = np.concatenate(train), np.concatenate(test)
    assert not set(train_all.tolist()) & set(test_all.tolist())
    for d, (a, b) in enumerate(zip(train, test, strict=True), start=1):
        low = 0 if d == 1 else 10 ** (d - 1)
        assert a.size and b.size and a.min() >= low and max(a.max(), b.max()) < 10**d
    with pytest.raises(ValueError, match="max_digits"):
        split_numbers(0, 10, 10)


def test_translate_trains_and_decodes(tmp_path):
    out = tmp_path / "run"
    losses, result = run_tiny(
        "translate",
        out,
        steps=30,
        hidden=32,
        embed=16,
        batch_size=32,
        max_digits=3,
        train_size=300,
        test_size=30,
        beam=2,
    )
    assert len(losses) == 3 and losses[-1] < losses[0]
    ev = result["evaluation"]
    for key in ("exact_match_greedy", "exact_match_beam", "bleu_greedy", "bleu_beam"):
        assert 0.0 <= ev[key] <= 1.0
    assert sum(ev["test_numbers_by_digits"].values()) == ev["test_numbers"]
    assert result["target"] == {
        "metric": "exact_match_greedy",
        "threshold": 0.95,
        "met": ev["exact_match_greedy"] >= 0.95,
    }
    assert (out / "checkpoints").is_dir()
    assert ev["example"]["english"] == "three hundred and twelve"


def test_translate_refuses_empty_and_unknown_sentences():
    data = TranslationData(2, 40, 4)
    model = seq2seq(len(data.src_vocab), len(data.tgt_vocab), embed=4, hidden=8)
    params = model.init(jax.random.key(0))
    out = translate(model, params, data, [english(7), english(42)], beam_size=2)
    assert len(out) == 2 and all(w in data.tgt_vocab.words for s in out for w in s)
    with pytest.raises(ValueError, match="empty sentence"):
        translate(model, params, data, [[]])
    with pytest.raises(ValueError, match="unknown word 'zillion'"):
        translate(model, params, data, [["one", "zillion"]])
