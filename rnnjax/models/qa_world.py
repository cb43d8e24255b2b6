"""A small world simulator that writes bAbI-style stories with questions and answers.

People move between rooms, meet each other, put down and pick up objects; the simulator keeps
the true state and asks questions about it, like the lecture's example::

    John entered the living room , where he met Mary . She was drinking some wine and
    watching a movie . ... What room did John enter ?    →  John entered the living room .

Questions (answers are whole sentences):

- ``Where is P ?`` → ``P is in the R .`` (P's last room)
- ``What room did P enter ?`` → ``P entered the R .``
- ``Where is the O ?`` → ``The O is in the R .`` (an object carried by P is where P is)
- ``What is P carrying ?`` → ``P is carrying the O .`` or ``P is carrying nothing .``

Stories are a deterministic function of the numpy generator they are drawn with.

References:
    Weston et al., "Towards AI-complete question answering: a set of prerequisite toy tasks"
    (bAbI), 2015: tasks 1–2 (one and two supporting facts) are this kind of story.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PEOPLE = {"John": "He", "Mary": "She", "Sandra": "She", "Daniel": "He"}
ROOMS = ("kitchen", "living room", "garden", "bathroom", "bedroom", "office", "hallway")
OBJECTS = ("football", "apple", "milk", "book")
MOVES = ("went to", "moved to", "journeyed to", "entered")
PASTIMES = ("drinking some wine and watching a movie", "reading the paper", "cooking dinner")
QUESTION_KINDS = ("where_person", "room_entered", "where_object", "carrying")


class Example(NamedTuple):
    """One story with its question and answer (tokenised: lists of words).

    Attributes:
        story: the story's words (all sentences, punctuation as words).
        question: the question's words.
        answer: the answer sentence's words.
        kind: one of `QUESTION_KINDS`.
    """

    story: list[str]
    question: list[str]
    answer: list[str]
    kind: str


_WEIGHTS = {"move": 3.0, "meet": 1.0, "fetch": 2.0, "drop": 1.0, "place": 1.5}


class _World:
    """The true state: where each person is, what each carries, where loose objects lie."""

    def __init__(self) -> None:
        self.room: dict[str, str] = {}  # person -> room (once mentioned with a room)
        self.carrying: dict[str, str | None] = dict.fromkeys(PEOPLE)
        self.lying: dict[str, str] = {}  # object -> room, for objects on the floor
        self.sentences: list[str] = []

    def object_room(self, obj: str) -> str | None:
        for person, held in self.carrying.items():
            if held == obj:
                return self.room.get(person)
        return self.lying.get(obj)

    def events(self) -> dict[str, list[tuple]]:
        """The events possible now: kind -> list of arguments."""
        out: dict[str, list[tuple]] = {k: [] for k in _WEIGHTS}
        for p in PEOPLE:
            out["move"] += [(p, r) for r in ROOMS if self.room.get(p) != r]
            out["meet"] += [
                (p, q) for q in self.room if q != p and self.room.get(p) != self.room[q]
            ]
            if self.carrying[p] is None:
                out["fetch"] += [(p, o) for o in self.lying]
            elif p in self.room:
                out["drop"].append((p, self.carrying[p]))
        held = set(self.carrying.values())
        out["place"] = [
            (o, r) for o in OBJECTS if o not in self.lying and o not in held for r in ROOMS
        ]
        return {k: v for k, v in out.items() if v}

    def apply(self, rng: np.random.Generator, kind: str, args: tuple) -> None:
        if kind == "move":
            p, r = args
            self.room[p] = r
            self.sentences.append(f"{p} {MOVES[rng.integers(len(MOVES))]} the {r} .")
        elif kind == "meet":
            p, q = args
            self.room[p] = self.room[q]
            pronoun = PEOPLE[p].lower()
            self.sentences.append(f"{p} entered the {self.room[q]} , where {pronoun} met {q} .")
            if rng.random() < 0.5:
                pastime = PASTIMES[rng.integers(len(PASTIMES))]
                self.sentences.append(f"{PEOPLE[q]} was {pastime} .")
        elif kind == "fetch":  # go where the object lies (if not there yet), pick it up
            p, o = args
            if self.room.get(p) != self.lying[o]:
                self.apply(rng, "move", (p, self.lying[o]))
            self.carrying[p] = o
            del self.lying[o]
            verb = "picked up" if rng.random() < 0.5 else "grabbed"
            self.sentences.append(f"{p} {verb} the {o} .")
        elif kind == "drop":
            p, o = args
            self.carrying[p] = None
            self.lying[o] = self.room[p]
            verb = "dropped" if rng.random() < 0.5 else "put down"
            self.sentences.append(f"{p} {verb} the {o} .")
        else:  # place
            o, r = args
            self.lying[o] = r
            self.sentences.append(f"The {o} is in the {r} .")

    def questions(self) -> list[tuple[str, str, str]]:
        """Every answerable (kind, question, answer) about the current state."""
        out = []
        for p, r in self.room.items():
            out.append(("where_person", f"Where is {p} ?", f"{p} is in the {r} ."))
            out.append(("room_entered", f"What room did {p} enter ?", f"{p} entered the {r} ."))
            held = self.carrying[p]
            thing = "nothing" if held is None else f"the {held}"
            out.append(("carrying", f"What is {p} carrying ?", f"{p} is carrying {thing} ."))
        for o in OBJECTS:
            room = self.object_room(o)
            if room is not None:
                out.append(("where_object", f"Where is the {o} ?", f"The {o} is in the {room} ."))
        return out


def story(rng: np.random.Generator, min_sentences: int = 4, max_sentences: int = 8) -> Example:
    """One random story of ``min_sentences``–``max_sentences`` sentences and a question.

    Events are added until the story has at least a drawn number of sentences in that range
    (an event writes one or two sentences, so the last one may end one sentence beyond it).

    An event kind (move, meet, fetch, drop, place) is drawn with fixed weights among the
    possible ones, then its arguments uniformly. The question kind is drawn uniformly among
    those answerable at the end, then one such question uniformly (for "carrying", someone
    who carries something when there is such a person).
    """
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(
            f"need 1 <= min_sentences <= max_sentences, got {min_sentences=}, {max_sentences=}"
        )
    world = _World()
    length = int(rng.integers(min_sentences, max_sentences + 1))
    while len(world.sentences) < length:
        events = world.events()
        kinds = list(events)
        weights = np.asarray([_WEIGHTS[k] for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        world.apply(rng, kind, events[kind][rng.integers(len(events[kind]))])
    questions = world.questions()
    kinds = sorted({k for k, _, _ in questions}, key=QUESTION_KINDS.index)
    kind = kinds[rng.integers(len(kinds))]
    options = [(q, a) for k, q, a in questions if k == kind]
    if kind == "carrying" and any(not a.endswith("nothing .") for _, a in options):
        options = [(q, a) for q, a in options if not a.endswith("nothing .")]
    question, answer = options[rng.integers(len(options))]
    words = " ".join(world.sentences).split()
    return Example(words, question.split(), answer.split(), kind)


def stories(
    seed: int, n: int, exclude: set[str] | None = None, max_words: int | None = None, **kwargs
) -> list[Example]:
    """``n`` stories from ``np.random.default_rng(seed)``.

    Skips any whose story + question text is in ``exclude`` (so that a test set is disjoint
    from the training set) or has more than ``max_words`` words; ``kwargs`` go to `story`.
    """
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    while len(out) < n:
        ex = story(rng, **kwargs)
        too_long = max_words is not None and len(ex.story) + len(ex.question) > max_words
        if not too_long and (exclude is None or key_of(ex) not in exclude):
            out.append(ex)
    return out


def key_of(ex: Example) -> str:
    """The text identifying a story + question (for de-duplication)."""
    return " ".join([*ex.story, "|", *ex.question])


__all__ = ["OBJECTS", "PEOPLE", "QUESTION_KINDS", "ROOMS", "Example", "key_of", "stories", "story"]
