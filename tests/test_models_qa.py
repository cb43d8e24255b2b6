"""Question answering: the story simulator against an independent reader, the model, errors."""

import re

import pytest
from test_models_seq2seq import run_tiny

from rnnjax.models import qa_world
from rnnjax.models.qa import VOCAB, answer, encode, tokenize

ROOM = "|".join(qa_world.ROOMS)


def oracle(example):
    """Re-reads the story's text and answers the question (written apart from the simulator)."""
    where, holds, lies = {}, {}, {}
    for sentence in " ".join(example.story).split(" . "):
        sentence = sentence.strip(" .")
        if m := re.fullmatch(rf"(\w+) entered the ({ROOM}) , where (he|she) met (\w+)", sentence):
            assert where[m[4]] == m[2], "met someone who was not there"
            where[m[1]] = m[2]
        elif m := re.fullmatch(
            rf"(\w+) (?:went to|moved to|journeyed to|entered) the ({ROOM})", sentence
        ):
            where[m[1]] = m[2]
        elif m := re.fullmatch(r"(\w+) (?:picked up|grabbed) the (\w+)", sentence):
            assert lies.pop(m[2]) == where[m[1]] and holds.get(m[1]) is None
            holds[m[1]] = m[2]
        elif m := re.fullmatch(r"(\w+) (?:dropped|put down) the (\w+)", sentence):
            assert holds.pop(m[1]) == m[2]
            lies[m[2]] = where[m[1]]
        elif m := re.fullmatch(rf"The (\w+) is in the ({ROOM})", sentence):
            lies[m[1]] = m[2]
        else:
            assert re.fullmatch(r"(He|She) was [a-z ]+", sentence), sentence
    q = " ".join(example.question)
    if m := re.fullmatch(r"Where is the (\w+) \?", q):
        holder = [p for p, o in holds.items() if o == m[1]]
        return f"The {m[1]} is in the {where[holder[0]] if holder else lies[m[1]]} ."
    if m := re.fullmatch(r"Where is (\w+) \?", q):
        return f"{m[1]} is in the {where[m[1]]} ."
    if m := re.fullmatch(r"What room did (\w+) enter \?", q):
        return f"{m[1]} entered the {where[m[1]]} ."
    m = re.fullmatch(r"What is (\w+) carrying \?", q)
    held = holds.get(m[1])
    return f"{m[1]} is carrying {'nothing' if held is None else 'the ' + held} ."


def test_simulator_answers_agree_with_an_independent_reader():
    seed = 2024  # fixed: a suite that passes once passes again
    examples = qa_world.stories(seed, 300)
    for ex in examples:
        assert oracle(ex) == " ".join(ex.answer), (seed, " ".join(ex.story + ex.question))
    assert {ex.kind for ex in examples} == set(qa_world.QUESTION_KINDS)
    lengths = [len(ex.story) for ex in examples]
    assert min(lengths) >= 4 * 5 and max(lengths) <= 9 * 12


def test_test_set_is_disjoint_and_every_word_is_in_the_vocabulary():
    train = qa_world.stories(1, 200)
    seen = {qa_world.key_of(e) for e in train}
    test = qa_world.stories(1, 50, exclude=seen)  # same seed: every story must be skipped
    assert not seen & {qa_world.key_of(e) for e in test}
    batch = encode(train + test)
    assert batch.src.shape[0] == 250 and batch.src.max() < len(VOCAB)
    assert tokenize("Where is John?") == ["Where", "is", "John", "?"]


def test_qa_trains_and_answers(tmp_path):
    out = tmp_path / "qa"
    losses, saved = run_tiny(
        "qa",
        out,
        steps=30,
        hidden=32,
        embed=16,
        batch_size=16,
        train_size=200,
        test_size=20,
        lr=1e-2,
    )
    assert losses[-1] < losses[0]
    assert saved["evaluation"]["test_stories"] == 20
    assert 0.0 <= saved["evaluation"]["exact_answer"] <= 1.0
    assert saved["target"]["threshold"] == 0.95
    assert saved["command"].startswith("rnnjax train --task qa")
    assert saved["evaluation"]["lecture_example"]["answer"].split()  # the decoder wrote words


def test_bad_questions_are_refused():
    from rnnjax.models.seq2seq import seq2seq

    model = seq2seq(len(VOCAB), len(VOCAB), embed=4, hidden=4)
    params = model.init(__import__("jax").random.key(0))
    with pytest.raises(ValueError, match="question is empty"):
        answer(model, params, "John went to the kitchen.", "  ")
    with pytest.raises(ValueError, match="unknown word 'castle'"):
        answer(model, params, "John went to the castle.", "Where is John?")
    assert isinstance(answer(model, params, "John went to the kitchen.", "Where is John?"), str)
