"""Shared application pieces: greedy and beam search, BLEU, the encoder–decoder, the registry."""

import importlib.util
import itertools
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.cli import main as cli
from rnnjax.models.decoding import beam_search, corpus_bleu, greedy_search
from rnnjax.models.registry import APPLICATIONS, run_application
from rnnjax.models.seq2seq import BOS, EOS, PAD, WordVocab, pad_pairs, seq2seq

V, EOS_ID = 5, 1  # toy vocabulary for the search tests: 0 pad, 1 eos, 2..4 words


def markov_step(table):
    """A decoder whose next-token distribution depends only on the last token."""

    def step(carry, token):
        return carry + 1, table[token]  # carry counts steps (any pytree works)

    return step


def brute_force_best(table, first, max_len):
    """Exhaustive search over every sequence of max_len tokens (ended by eos, then pad)."""
    best, best_score = None, -math.inf
    for rest in itertools.product(range(V), repeat=max_len - 1):
        for t0 in range(V):
            seq, score, done = [t0], first[t0], t0 == EOS_ID
            for t in rest:
                if done:
                    if t != PAD:
                        score = -math.inf
                else:
                    score += table[seq[-1], t]
                    done = t == EOS_ID
                seq.append(t)
            if score > best_score:
                best, best_score = seq, score
    return best, best_score


def random_table(key):
    k1, k2 = jax.random.split(key)
    table = jax.nn.log_softmax(2.0 * jax.random.normal(k1, (V, V)), axis=-1)
    table = table.at[:, PAD].set(-1e9)  # the model never proposes pad
    first = jax.nn.log_softmax(2.0 * jax.random.normal(k2, (V,))).at[PAD].set(-1e9)
    return table, first


def test_beam_search_with_full_beam_is_exact_on_two_steps(rng):
    for key in jax.random.split(rng, 4):
        table, first = random_table(key)
        search = jax.jit(
            lambda table, c, lp: beam_search(
                markov_step(table), c, lp, max_len=2, beam_size=V, eos=EOS_ID
            )
        )
        tokens, score = search(table, jnp.zeros((1,)), first[None])
        want, want_score = brute_force_best(np.asarray(table), np.asarray(first), 2)
        assert tokens[0].tolist() == want
        np.testing.assert_allclose(float(score[0]), want_score, rtol=1e-5)


def test_greedy_equals_beam_of_one_and_beam_scores_at_least_greedy(rng):
    table, first = random_table(rng)
    step = markov_step(table)
    lp = jnp.tile(first[None], (3, 1))  # (3, V)
    g_tok, g_score = jax.jit(
        lambda lp: greedy_search(step, jnp.zeros((3,)), lp, max_len=4, eos=EOS_ID)
    )(lp)
    b1_tok, b1_score = beam_search(step, jnp.zeros((3,)), lp, max_len=4, beam_size=1, eos=EOS_ID)
    chex.assert_trees_all_equal(g_tok, b1_tok)
    chex.assert_trees_all_close(g_score, b1_score, rtol=1e-5)
    _, b_score = beam_search(step, jnp.zeros((3,)), lp, max_len=4, beam_size=3, eos=EOS_ID)
    assert np.all(np.asarray(b_score) >= np.asarray(g_score) - 1e-5)
    tokens = np.asarray(g_tok)
    for row in tokens:  # after eos only padding
        if EOS_ID in row.tolist():
            assert set(row[row.tolist().index(EOS_ID) + 1 :].tolist()) <= {PAD}


def test_search_rejects_bad_arguments():
    lp = jnp.zeros((2, V))
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(markov_step(jnp.zeros((V, V))), 0, lp, max_len=3, beam_size=V + 1, eos=1)
    with pytest.raises(ValueError, match="max_len"):
        greedy_search(markov_step(jnp.zeros((V, V))), 0, lp, max_len=0, eos=1)


def test_corpus_bleu_by_hand():
    """sacreBLEU's corpus BLEU on the 0–100 scale, against values computed by hand."""
    ref = [["the", "cat", "sat", "on", "the", "mat"]]
    assert corpus_bleu(ref, ref) == pytest.approx(100.0)
    assert corpus_bleu(ref, [[]]) == 0.0
    hyp = [["the", "cat", "sat", "on", "a", "mat"]]
    # p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, same length (no brevity penalty)
    assert corpus_bleu(ref, hyp) == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # no bigram matches: p1 = 6/6, and the exp smoothing counts the empty orders as
    # 1/(2·5), 1/(4·4), 1/(8·3)
    scrambled = [["mat", "the", "on", "sat", "cat", "the"]]
    assert corpus_bleu(ref, scrambled) == pytest.approx(100 * (1 / 10 / 16 / 24) ** 0.25)
    with pytest.raises(ValueError, match="hypotheses"):
        corpus_bleu(ref, [])


def test_vocab_and_padding_errors():
    vocab = WordVocab.build([["b", "a"], ["c"]])
    assert vocab.encode(["a", "c"]) == [3, 5]
    assert vocab.decode([3, 5, EOS, 4]) == ["a", "c"]
    with pytest.raises(ValueError, match="unknown word 'z'"):
        vocab.encode(["a", "z"])
    batch = pad_pairs([[3, 4]], [[5]], src_len=3, tgt_len=3)
    assert batch.tgt_in.tolist() == [[BOS, 5, PAD]] and batch.tgt_out.tolist() == [[5, EOS, PAD]]
    with pytest.raises(ValueError, match="does not fit"):
        pad_pairs([[3, 4, 5, 6]], [[5]], src_len=3, tgt_len=3)


def test_seq2seq_learns_to_reverse_and_decodes_under_jit(rng):
    """A few Adam steps on a tiny task lower the loss; decode keeps its shapes, no retrace."""
    import optax

    model = seq2seq(8, 8, embed=8, hidden=16)
    params = model.init(rng)
    src = jax.random.randint(jax.random.fold_in(rng, 1), (16, 3), 3, 8)
    batch = pad_pairs(np.asarray(src).tolist(), np.asarray(src[:, ::-1]).tolist(), 3, 4)
    batch = jax.tree.map(jnp.asarray, batch)
    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def update(params, state):
        (loss, _), grads = jax.value_and_grad(model.loss, has_aux=True)(params, batch)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(25):
        params, state, loss = update(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def decode(params, src, src_len):
        return model.decode(params, src, src_len, max_len=4, beam_size=2)

    for _ in range(2):
        tokens, scores = decode(params, batch.src, batch.src_len)
    chex.assert_shape(tokens, (16, 4))
    chex.assert_shape(scores, (16,))
    assert np.all(np.isfinite(np.asarray(scores)))


def test_registry_names_and_bad_task(tmp_path, capsys):
    assert set(APPLICATIONS) == {
        "translate",
        "caption",
        "qa",
        "handwriting",
        "handwriting_recognition",
        "tree",
        "vqa",
    }
    with pytest.raises(ValueError, match="unknown application 'sing'"):
        run_application(["--task", "sing", "--out", str(tmp_path)])
    assert cli(["train", "--task=sing", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'sing'" in err[0] and "translate" in err[0]


def test_common_flags_are_checked(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    assert cli(["train", "--task", "tree", "--out", str(tmp_path / "taken")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert cli(["train", "--task", "tree", "--steps", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
    assert cli(["train", "--task", "qa", "--lr", "-1", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rnnjax train: error: --lr must be > 0, got -1.0"]
    assert cli(["train", "--task", "caption", "--out", str(tmp_path / "c"), "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def run_tiny(task, out, **flags):
    """Runs application ``task`` with small flags; returns (training losses, result.json).

    Flags are keyword arguments (``batch_size=8`` → ``--batch-size 8``; lists give several
    values); metrics are logged every 10 steps.
    """
    argv = ["--task", task, "--out", str(out), "--log-every", "10", "--quiet"]
    for name, value in flags.items():
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name.replace('_', '-')}", *map(str, values)]
    run_application(argv)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "split" not in r]
    return losses, json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("missing", ["num2words", "sacrebleu"])
def test_an_application_without_its_package_names_the_extra_before_training(
    tmp_path, capsys, monkeypatch, missing
):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == missing else real_find_spec(name, *a),
    )
    assert cli(["train", "--task", "translate", "--steps", "1", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "rnnjax[apps]" in err[0], err
    assert not (tmp_path / "t").exists()
