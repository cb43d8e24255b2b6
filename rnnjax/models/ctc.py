"""Connectionist temporal classification: the loss, greedy and beam decoding, error rates.

A CTC network emits, at every input step t, a distribution y_t over the K labels plus a
*blank* (index `BLANK` = 0). A path π ∈ {0..K}^T maps to a labelling by 𝓑: merge repeated
labels, then drop the blanks (``aa_b_bb → ab b`` becomes "abb"), and

    p(l | x) = Σ_{π : 𝓑(π) = l} Π_t y_t(π_t),      loss = −log p(l | x)

(Graves et al. 2006). The loss is `optax.ctc_loss` (the forward–backward recursion); the
decoders are the best path (greedy: 𝓑 of the per-step argmax) and the prefix beam search,
which keeps the ``beam`` labellings l with the highest p(l…| x_1..t), each split into the
probability of paths ending in a blank and in its last label (Graves 2012, §7.5; Hannun et al.
2014). With a beam wide enough to keep every prefix it is exact.

References:
    Graves, Fernández, Gomez & Schmidhuber, "Connectionist temporal classification", ICML 2006.
    Graves, "Supervised sequence labelling with recurrent neural networks", 2012, chapter 7.
    Hannun et al., "First-pass large vocabulary continuous speech recognition using
    bi-directional recurrent DNNs", 2014 (prefix beam search).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.cells.base import Array

BLANK = 0


def ctc_loss(log_probs: Array, lengths: Array, labels: Array, label_lengths: Array) -> Array:
    """−log p(labels | x) per sequence, (B,).

    Args:
        log_probs: float (B, T, K + 1) per-step log-probabilities (or logits), blank at 0.
        lengths: int (B,) valid steps.
        labels: int (B, N) labels in 1..K, anything after ``label_lengths``.
        label_lengths: int (B,).
    """
    T, N = log_probs.shape[1], labels.shape[1]
    logit_pad = (jnp.arange(T)[None, :] >= lengths[:, None]).astype(log_probs.dtype)  # (B, T)
    label_pad = (jnp.arange(N)[None, :] >= label_lengths[:, None]).astype(log_probs.dtype)
    return optax.ctc_loss(log_probs, logit_pad, labels, label_pad, blank_id=BLANK)  # (B,)


def collapse(path: Sequence[int]) -> list[int]:
    """𝓑: merge repeated labels, then drop blanks."""
    out, previous = [], None
    for p in path:
        if p != previous and p != BLANK:
            out.append(int(p))
        previous = p
    return out


def greedy_decode(log_probs, lengths) -> list[list[int]]:
    """Best-path decoding: 𝓑(argmax_k y_t(k)) of each sequence of (B, T, K + 1), over its
    first ``lengths[b]`` steps."""
    best = np.asarray(jnp.argmax(jnp.asarray(log_probs), axis=-1))  # (B, T)
    return [collapse(best[b, :n].tolist()) for b, n in enumerate(np.asarray(lengths).tolist())]


def beam_decode_one(log_probs: np.ndarray, beam: int = 8, prune: float = -12.0):
    """Prefix beam search over one sequence's (T, K + 1) log-probabilities.

    Args:
        log_probs: (T, K + 1), blank at 0.
        beam: prefixes kept after each step.
        prune: labels with log y_t(k) below this are not tried at step t (none is, at −inf).

    Returns:
        ``(labels, log p)``: the best labelling found and its log-probability.
    """
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be a positive integer, got {beam}")
    lp = np.asarray(log_probs, np.float64)
    # prefix -> [log p(paths so far → prefix, ending in blank), ... ending in its last label]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, -np.inf]}
    for t in range(lp.shape[0]):
        y = lp[t]
        labels = [k for k in np.flatnonzero(y >= prune).tolist() if k != BLANK]
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix, which, value, nxt=nxt):
            cell = nxt.setdefault(prefix, [-np.inf, -np.inf])
            cell[which] = np.logaddexp(cell[which], value)

        for prefix, (p_b, p_l) in beams.items():
            total = np.logaddexp(p_b, p_l)
            add(prefix, 0, total + y[BLANK])
            for k in labels:
                if prefix and prefix[-1] == k:
                    add((*prefix, k), 1, p_b + y[k])  # a blank separated the repeat
                    add(prefix, 1, p_l + y[k])  # the repeat merges
                else:
                    add((*prefix, k), 1, total + y[k])
        ranked = sorted(nxt.items(), key=lambda kv: -_total(kv[1]))
        beams = dict(ranked[:beam])
    best, cell = max(beams.items(), key=lambda kv: _total(kv[1]))
    return list(best), _total(cell)


def _total(cell: list[float]) -> float:
    """log(p_blank + p_label) of a prefix."""
    return float(np.logaddexp(cell[0], cell[1]))


def beam_decode(log_probs, lengths, beam: int = 8) -> list[list[int]]:
    """`beam_decode_one` of each sequence of (B, T, K + 1) over its valid steps."""
    lp = np.asarray(log_probs)
    return [beam_decode_one(lp[b, :n], beam)[0] for b, n in enumerate(np.asarray(lengths).tolist())]


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from a to b."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def error_rate(hypotheses: Sequence[Sequence], references: Sequence[Sequence]) -> float:
    """Σ edit_distance(h, r) / Σ len(r): the character error rate of strings (the word error
    rate of word lists)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)=} hypotheses but {len(references)=} references")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("the references are empty")
    return sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True)) / total


__all__ = [
    "BLANK",
    "beam_decode",
    "beam_decode_one",
    "collapse",
    "ctc_loss",
    "edit_distance",
    "error_rate",
    "greedy_decode",
]
