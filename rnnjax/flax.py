"""rnnjax cells as Flax modules: drop an rnnjax LSTM into an nnx (or linen) model.

The modules hold the cell's params and call `rnnjax.unroll`, so every backend and option of
the functional API is available and the results are identical to it::

    from flax import nnx
    import rnnjax as rj
    from rnnjax.flax import RNN

    class Tagger(nnx.Module):
        def __init__(self, rngs):
            self.rnn = RNN(rj.lstm(64), input_size=16, rngs=rngs)
            self.out = nnx.Linear(64, 5, rngs=rngs)

        def __call__(self, xs, lengths=None):
            _, hs = self.rnn(xs, lengths=lengths)
            return self.out(hs)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from rnnjax.cells.base import Array, Cell
from rnnjax.driver import unroll
from rnnjax.regularise import with_key


def _is_param(x: Any) -> bool:
    return isinstance(x, nnx.Param)


class RNN(nnx.Module):
    """An nnx module around one rnnjax cell.

    Args:
        cell: an rnnjax `Cell` (e.g. ``rj.gru(128)``).
        input_size: D.
        rngs: ``nnx.Rngs`` (its ``params`` stream initialises the cell).
        **unroll_options: defaults for `rnnjax.unroll` (``backend``, ``remat``, ``unroll``,
            ``time_major``); a call may override them.

    Attributes:
        params: the cell's params NamedTuple with every array wrapped in ``nnx.Param``.
    """

    def __init__(self, cell: Cell, input_size: int, *, rngs: nnx.Rngs, **unroll_options):
        self.cell = cell
        self.unroll_options = dict(unroll_options)
        self.params = nnx.data(jax.tree.map(nnx.Param, cell.init(rngs.params(), input_size)))

    @property
    def functional_params(self) -> Any:
        """The params as the functional API sees them (a NamedTuple of arrays)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_param)

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> Any:
        """Zero carry for ``batch_shape``."""
        return self.cell.initial_carry(self.functional_params, batch_shape)

    def __call__(
        self, xs: Array, carry: Any = None, *, key: Array | None = None, **options
    ) -> tuple[Any, Array]:
        """``(final_carry, ys) = rnnjax.unroll(cell, params, xs, carry, **options)``.

        ``key`` draws the masks of a `rnnjax.regularised` cell (training); without it the
        cell evaluates.
        """
        cell = with_key(self.cell, key)
        return unroll(cell, self.functional_params, xs, carry, **{**self.unroll_options, **options})

    def step(self, carry: Any, x_t: Array) -> tuple[Any, Array]:
        """One timestep from a raw input (for decoding): ``cell.step``."""
        return self.cell.step(self.functional_params, carry, x_t)


class LinenRNN(nn.Module):
    """A flax.linen module around one rnnjax cell; its params are the cell's NamedTuple.

    Attributes:
        cell: an rnnjax `Cell`.
        backend: the `rnnjax.unroll` backend.
    """

    cell: Cell
    backend: str = "auto"

    @nn.compact
    def __call__(self, xs: Array, carry: Any = None, **options) -> tuple[Any, Array]:
        params = self.param("cell", lambda key: self.cell.init(key, xs.shape[-1]))
        return unroll(self.cell, params, xs, carry, backend=self.backend, **options)


class SequenceLayer(nnx.Module):
    """An nnx module around an rnnjax sequence layer: `rnnjax.rnn`, `rnnjax.stacked`,
    `rnnjax.bidirectional` (anything with ``init(key, input_size)`` and ``apply``).

    Dropout (between layers and in `rnnjax.regularised` cells) follows nnx's convention, like
    ``nnx.Dropout``: active while ``deterministic`` is False (``model.train()``), off after
    ``model.eval()``; its keys come from the ``dropout`` stream of ``rngs`` (or a call's
    ``key=``).

    Args:
        layer: e.g. ``rj.rnn("lstm", 64, num_layers=2, bidirectional=True, dropout=0.1)``.
        input_size: D.
        rngs: ``nnx.Rngs``: ``params`` initialises the layer, ``dropout`` draws the masks.
        deterministic: start with dropout off.
        **apply_options: defaults for ``layer.apply`` (``backend``, ``time_major``, ...).

    Example:
        >>> rnn = SequenceLayer(rj.rnn("gru", 32, num_layers=2), input_size=8,
        ...                     rngs=nnx.Rngs(0))
        >>> carry, ys = rnn(xs, lengths=lengths)           # ys (B, T, 32)
    """

    def __init__(
        self,
        layer: Any,
        input_size: int,
        *,
        rngs: nnx.Rngs,
        deterministic: bool = False,
        **apply_options,
    ):
        self.layer = layer
        self.apply_options = dict(apply_options)
        self.deterministic = deterministic
        self.params = nnx.data(jax.tree.map(nnx.Param, layer.init(rngs.params(), input_size)))
        self.rngs = rngs["dropout"].fork()

    @property
    def functional_params(self) -> Any:
        """The params as the functional API sees them."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_param)

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> Any:
        """Zero carry for ``batch_shape``."""
        return self.layer.initial_carry(self.functional_params, batch_shape)

    def __call__(
        self,
        xs: Array,
        carry: Any = None,
        *,
        key: Array | None = None,
        deterministic: bool | None = None,
        **options,
    ) -> tuple[Any, Array]:
        """``(carry, ys) = layer.apply(params, xs, carry, key=…, **options)``."""
        off = self.deterministic if deterministic is None else deterministic
        if key is None and not off:
            key = self.rngs()
        options = {**self.apply_options, **options}
        return self.layer.apply(
            self.functional_params, xs, carry, key=None if off else key, **options
        )


class LinenSequenceLayer(nn.Module):
    """A flax.linen module around an rnnjax sequence layer (see `SequenceLayer`).

    Attributes:
        layer: e.g. ``rj.rnn("lstm", 64, num_layers=2, bidirectional=True)``.

    Dropout is on when the call has ``deterministic=False``; its key comes from the
    ``"dropout"`` rng collection (``apply(..., rngs={"dropout": key})``).
    """

    layer: Any

    @nn.compact
    def __call__(
        self, xs: Array, carry: Any = None, *, deterministic: bool = True, **options
    ) -> tuple[Any, Array]:
        params = self.param("layer", lambda key: self.layer.init(key, xs.shape[-1]))
        key = None if deterministic else self.make_rng("dropout")
        return self.layer.apply(params, xs, carry, key=key, **options)


__all__ = ["RNN", "LinenRNN", "LinenSequenceLayer", "SequenceLayer"]
