r"""Recurrent regularisation as cell transformations: pure functions of a PRNG key.

``rj.regularised(cell, key, ...)`` returns a cell with the same params and carry whose
computation is the regularised one; ``key=None`` gives the evaluation cell (every dropout off,
zoneout replaced by its expectation). Draw a fresh key per training step::

    cell = rj.regularised(rj.lstm(256), input_dropout=0.2, recurrent_dropout=0.25,
                          zoneout_c=0.5, zoneout_h=0.05, weight_drop=0.5)   # evaluation cell
    def loss(params, xs, key):
        _, ys = rj.unroll(rj.with_key(cell, key), params, xs)             # training cell
        ...

The layers (`rnnjax.layers.stacked`, `rnnjax.layers.bidirectional`, `rnnjax.rnn`) and the
flax modules call `with_key` with the key they are given, so a regularised cell placed in
them is trained with it and evaluated without it.

What each option computes (dropout masks are inverted: kept entries are scaled by
1 / (1 − p), so the expectation is the plain cell):

- ``input_dropout`` (variational, Gal & Ghahramani 2016): x_t ⊙ m_x with one mask m_x per
  sequence for all t; in ``project``, before the hoisted matmul.
- ``recurrent_dropout`` (variational, Gal & Ghahramani 2016): (h_{t-1} ⊙ m_h) W with one mask
  m_h for all t. With ``recurrent_mask="batch"`` (default) m_h is drawn once per forward pass
  and shared by the sequences of the batch, so (h ⊙ m_h) W = h (diag(m_h) W): the mask is
  applied to the rows of W, outside the loop, and every backend runs it at no cost. With
  ``recurrent_mask="sequence"`` each sequence has its own m_h, as in the paper; that mask
  sits between h_{t-1} and the matmul, which the structured form's loops do not expose, so
  the cell has no structure and runs on ``backend="scan"`` only.
- ``zoneout_h``, ``zoneout_c`` (Krueger et al. 2017): each unit keeps its previous value with
  probability z, fresh per step: h_t = d_t ⊙ h_{t-1} + (1 − d_t) ⊙ h̃_t (z_h on the carry's
  first leaf h, z_c on the others: the LSTM's c). The masks d_t are per row and per step, so
  they ride in px as one more gate block (`rnnjax.cells.transform`: H zero columns in the
  recurrent matmul; for ``"pallas"`` an LSTM's 5 blocks are held as 8). At evaluation
  h_t = z h_{t-1} + (1 − z) h̃_t, with no extra block.
- ``weight_drop`` (DropConnect on W, Merity, Keskar & Socher 2017): W ⊙ M with one mask M per
  forward pass; outside the loop, every backend.

Masks are drawn from ``key`` with ``jax.random.fold_in`` (0: input, 1: recurrent, 2: zoneout,
3: weight drop). ``project`` of a training cell reads xs time-major, (T, *batch, D), as
`rnnjax.unroll` passes it (its ``step`` takes x_t (*batch, D) and draws the masks of a
one-step unroll);
under truncated BPTT pass the same key for the chunks of one sequence to keep its masks, or
fold the chunk index into it for fresh zoneout masks.

References:
    Gal & Ghahramani, "A theoretically grounded application of dropout in recurrent neural
    networks", NeurIPS 2016.
    Krueger et al., "Zoneout: regularizing RNNs by randomly preserving hidden activations",
    ICLR 2017.
    Merity, Keskar & Socher, "Regularizing and optimizing LSTM language models", 2017.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.cells.base import Array, Cell, Structure, expand, make_cell, matmul, split_blocks
from rnnjax.cells.transform import (
    TransformedConfig,
    extended_structure,
    split_extra,
    split_px,
)

RATES = ("input_dropout", "recurrent_dropout", "zoneout_h", "zoneout_c", "weight_drop")


def _check_rates(options: dict[str, Any]) -> None:
    for name in RATES:
        p = options[name]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {name}={p!r}")
    if options["recurrent_mask"] not in ("batch", "sequence"):
        raise ValueError(
            f"recurrent_mask must be 'batch' or 'sequence', got {options['recurrent_mask']!r}"
        )


def _keep(key: Array, p: float, shape: tuple[int, ...], dtype: Any) -> Array:
    """An inverted dropout mask: 1 / (1 − p) with probability 1 − p, else 0."""
    return jax.random.bernoulli(key, 1.0 - p, shape).astype(dtype) / (1.0 - p)


def _rates(options: dict[str, Any], n_leaves: int) -> tuple[float, ...]:
    """Zoneout probability of each carry leaf: z_h for h (leaf 0), z_c for the others."""
    return (options["zoneout_h"],) + (options["zoneout_c"],) * (n_leaves - 1)


class Masks(NamedTuple):
    """The masks a training cell applies (None where the option is off).

    Attributes:
        input: m_x, (*batch, D): 0 or 1 / (1 − p), one per sequence.
        recurrent: m_h, (H,) with ``recurrent_mask="batch"``, (*batch, H) with "sequence".
        zoneout: per carry leaf, d (*steps, *batch, H) bool (True: keep the previous value),
            or None for a leaf without zoneout.
        weight: M, the shape of W: 0 or 1 / (1 − p).
    """

    input: Array | None
    recurrent: Array | None
    zoneout: tuple[Array | None, ...]
    weight: Array | None


def _draw(
    options: dict[str, Any],
    key: Array,
    cell: Cell,
    params: Any,
    *,
    input_size: int,
    batch_shape: tuple[int, ...],
    steps: tuple[int, ...],
    dtype: Any,
) -> Masks:
    """Every mask of one forward pass of ``cell``, from ``key`` (fold_in 0 … 3, see above)."""
    keys = [jax.random.fold_in(key, i) for i in range(4)]
    H, s = cell.hidden_size, cell.structure
    p_x, p_h, p_w = (options[n] for n in ("input_dropout", "recurrent_dropout", "weight_drop"))
    m_x = _keep(keys[0], p_x, (*batch_shape, input_size), dtype) if p_x > 0.0 else None
    m_h = None
    if p_h > 0.0:
        shape = (H,) if options["recurrent_mask"] == "batch" else (*batch_shape, H)
        m_h = _keep(keys[1], p_h, shape, dtype)
    n_leaves = len(jax.tree.leaves(jax.eval_shape(lambda: cell.initial_carry(params, ()))))
    d = tuple(
        jax.random.bernoulli(jax.random.fold_in(keys[2], k), z, (*steps, *batch_shape, H))
        if z > 0.0
        else None
        for k, z in enumerate(_rates(options, n_leaves))
    )
    M = None
    if p_w > 0.0 and s is not None:
        W = jax.eval_shape(lambda: s.recurrent_weights(params))
        M = _keep(keys[3], p_w, tuple(W.shape), dtype)
    return Masks(m_x, m_h, d, M)


def masks(
    cell: Cell,
    key: Array,
    params: Any,
    batch_shape: tuple[int, ...] = (),
    steps: int | None = None,
    dtype: Any = jnp.float32,
) -> Masks:
    """The masks the training form of a `regularised` cell draws from ``key``.

    Args:
        cell: a `regularised` cell (either form).
        key: the key given to `regularised` / `with_key`.
        params: the cell's params (for D and W's shape).
        batch_shape: the batch shape of the inputs.
        steps: T for a whole sequence (zoneout masks (T, *batch, H)); None for one ``step``.
        dtype: the dtype of the dropout masks.

    Returns:
        `Masks`.
    """
    config = cell.config
    if not (isinstance(config, TransformedConfig) and config.transform == "regularised"):
        raise ValueError(f"masks needs a cell built by rj.regularised, got {cell.name!r}")
    D = getattr(getattr(params, "U", None), "shape", (0,))[0]
    steps_ = () if steps is None else (int(steps),)
    return _draw(
        dict(config.options),
        key,
        config.cell,
        params,
        input_size=int(D),
        batch_shape=tuple(batch_shape),
        steps=steps_,
        dtype=dtype,
    )


def _zoneout_code(d: tuple[Array | None, ...], dtype: Any) -> Array:
    """Σ_k d_k 2^k: every leaf's zoneout mask in one block of px."""
    code = sum((2.0**k) * m.astype(dtype) for k, m in enumerate(d) if m is not None)
    assert isinstance(code, jax.Array)
    return code


def _zoned(rates, code: Array | None, old: Any, new: Any) -> Any:
    """Mixes each new carry leaf with the old one: by the masks in ``code`` or by z."""
    olds, treedef = jax.tree.flatten(old)
    news = jax.tree.leaves(new)
    out = []
    for k, (z, o, n) in enumerate(zip(rates, olds, news, strict=True)):
        if z == 0.0:
            out.append(n)
        elif code is None:  # evaluation: the expectation
            out.append(z * o + (1.0 - z) * n)
        else:
            d = jnp.floor(code / 2.0**k) % 2.0 > 0.5  # (…, H)
            out.append(jnp.where(d, o, n))
    return jax.tree.unflatten(treedef, out)


def regularised(
    cell: Cell,
    key: Array | None = None,
    *,
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout_h: float = 0.0,
    zoneout_c: float = 0.0,
    weight_drop: float = 0.0,
    recurrent_mask: str = "batch",
) -> Cell:
    """The cell with recurrent regularisation (see the module docstring for the equations).

    Args:
        cell: any cell (recurrent dropout and weight drop need a recurrent matrix, i.e. a
            structured cell with one).
        key: the PRNG key of this forward pass; None for evaluation.
        input_dropout: p of the per-sequence mask on x_t.
        recurrent_dropout: p of the mask on h_{t-1} in the recurrent matmul.
        zoneout_h, zoneout_c: zoneout probabilities of h and of the other carry leaves.
        weight_drop: p of the DropConnect mask on W.
        recurrent_mask: "batch" (one mask per forward pass, every backend) or "sequence" (one
            per sequence, as Gal & Ghahramani; ``backend="scan"`` only).

    Returns:
        A `Cell` named ``"<name>+regularised"`` with the cell's params and carry.

    Raises:
        ValueError: a rate outside [0, 1), an unknown ``recurrent_mask``, or recurrent
            dropout / weight drop on a cell without a recurrent matrix.
    """
    options = dict(
        input_dropout=input_dropout,
        recurrent_dropout=recurrent_dropout,
        zoneout_h=zoneout_h,
        zoneout_c=zoneout_c,
        weight_drop=weight_drop,
        recurrent_mask=recurrent_mask,
    )
    _check_rates(options)
    s, H = cell.structure, cell.hidden_size
    needs_w = recurrent_dropout > 0.0 or weight_drop > 0.0
    if needs_w and (s is None or s.linear_coefficients is not None):
        raise ValueError(
            f"recurrent_dropout and weight_drop act on the recurrent matrix W; the "
            f"{cell.name!r} cell has no structure with one (got {recurrent_dropout=}, "
            f"{weight_drop=})"
        )
    training = key is not None
    zoneout = zoneout_h > 0.0 or zoneout_c > 0.0
    extra = training and zoneout  # masks ride in px
    per_sequence = training and recurrent_dropout > 0.0 and recurrent_mask == "sequence"

    def draw(params, D: int, batch_shape: tuple[int, ...], steps: tuple[int, ...], dtype):
        assert key is not None
        return _draw(
            options,
            key,
            cell,
            params,
            input_size=D,
            batch_shape=batch_shape,
            steps=steps,
            dtype=dtype,
        )

    def weights(params) -> Array | None:
        assert s is not None
        W = s.recurrent_weights(params)
        if not training or W is None:
            return W
        m = draw(params, 0, (), (), W.dtype)
        if m.weight is not None:
            W = W * m.weight  # (R, K·H)
        if m.recurrent is not None and recurrent_mask == "batch":
            W = W * m.recurrent[:, None]  # rows: (h ⊙ m_h) W = h (diag(m_h) W)
        return W

    def project_with(params, xs: Array, batch_shape: tuple[int, ...], steps: tuple) -> Array:
        if not training:
            return cell.project(params, xs)
        m = draw(params, xs.shape[-1], batch_shape, steps, xs.dtype)
        if m.input is not None:
            xs = xs * expand(m.input, xs)  # (…, D): one mask per sequence
        px = cell.project(params, xs)  # (…, G)
        blocks = [px]
        if per_sequence:
            assert m.recurrent is not None
            m_h = m.recurrent.astype(px.dtype)  # (*batch, H)
            blocks.append(jnp.broadcast_to(expand(m_h, px), (*px.shape[:-1], H)))
        if extra:
            blocks.append(_zoneout_code(m.zoneout, px.dtype))  # (…, H)
        return jnp.concatenate(blocks, axis=-1) if len(blocks) > 1 else px

    def project(params, xs: Array) -> Array:  # xs time-major, as unroll passes it
        return project_with(params, xs, tuple(xs.shape[1:-1]), tuple(xs.shape[:1]))

    build: dict[str, Any] = dict(
        name=f"{cell.name}+regularised",
        hidden_size=H,
        config=TransformedConfig("regularised", cell, tuple(options.items()), training),
        init=cell.init,
        initial_carry=cell.initial_carry,
        project=project,
    )
    if s is None or per_sequence:
        new = make_cell(**build, recur=_recur(cell, weights, options, per_sequence, extra))
    else:
        new = make_cell(**build, structure=_structure(s, H, weights, options, extra))
    if not training:
        return new

    def step(params, carry, x_t):
        from rnnjax.cells.checks import check_step

        carry, x_t = check_step(new, params, carry, x_t)
        px = project_with(params, x_t[None], tuple(x_t.shape[:-1]), (1,))[0]  # = unroll, T = 1
        return new.recur(params, carry, px)

    return new._replace(step=step)


def _structure(s: Structure, H: int, weights, options, extra: bool) -> Structure:
    """The structured form: masks on W outside the loop, zoneout masks in an extra block."""

    def rates_of(carry) -> tuple[float, ...]:
        return _rates(options, len(jax.tree.leaves(carry)))

    if not extra:

        def pointwise(up, carry, px, hw):
            new, _ = s.pointwise(up, carry, px, hw)
            new = _zoned(rates_of(carry), None, carry, new)
            return new, jax.tree.leaves(new)[0]

        linear = None
        if s.linear_coefficients is not None:
            z, inner_lc = options["zoneout_h"], s.linear_coefficients

            def linear(up, px):  # h = z h_{t-1} + (1 − z)(a h_{t-1} + b)
                a, b = inner_lc(up, px)
                return z + (1.0 - z) * a, (1.0 - z) * b

        return s._replace(
            recurrent_weights=weights, pointwise=pointwise, linear_coefficients=linear
        )

    def pointwise_extra(up, carry, px, hw):
        px_in, code = split_px(px)
        hw_in, _ = split_extra(hw)
        new, _ = s.pointwise(up, carry, px_in, hw_in)
        new = _zoned(rates_of(carry), code, carry, new)
        return new, jax.tree.leaves(new)[0]

    linear_extra = None
    if s.linear_coefficients is not None:
        inner_lc = s.linear_coefficients

        def linear_extra(up, px):  # d = 1: h_t = h_{t-1}
            px_in, code = split_px(px)
            a, b = inner_lc(up, px_in)
            d = code % 2.0 > 0.5
            return jnp.where(d, jnp.ones_like(a), a), jnp.where(d, jnp.zeros_like(b), b)

    return extended_structure(
        s,
        H,
        pointwise=pointwise_extra,
        unit_params=s.unit_params,
        recurrent_weights=weights,
        linear_coefficients=linear_extra,
    )


def _recur(cell: Cell, weights, options, per_sequence: bool, extra: bool):
    """``recur`` of a cell without a structure, or with per-sequence recurrent masks."""
    s, H = cell.structure, cell.hidden_size

    def recur(params, carry, px):
        code = px[..., -H:] if extra else None
        px = px[..., :-H] if extra else px
        if per_sequence:
            assert s is not None
            px, m_h = px[..., :-H], px[..., -H:]  # m_h: (…, H), one mask per sequence
            h = jax.tree.leaves(carry)[0]  # (…, H)
            hw = split_blocks(matmul(h * m_h, weights(params), s.compute_dtype), s.gates)
            new, _ = s.pointwise(s.unit_params(params), carry, split_blocks(px, s.gates), hw)
        else:
            new, _ = cell.recur(params, carry, px)
        new = _zoned(_rates(options, len(jax.tree.leaves(carry))), code, carry, new)
        return new, jax.tree.leaves(new)[0]

    return recur


def with_key(cell: Cell, key: Array | None) -> Cell:
    """The training form of a `regularised` cell drawn from ``key`` (None: evaluation).

    Any other cell is returned unchanged, so layers may call this on every cell they hold.
    """
    config = cell.config
    if not (isinstance(config, TransformedConfig) and config.transform == "regularised"):
        return cell
    if key is None and not config.training:
        return cell  # already the evaluation form (the same cell: compiled code is reused)
    return regularised(config.cell, key, **dict(config.options))


__all__ = ["Masks", "masks", "regularised", "with_key"]
