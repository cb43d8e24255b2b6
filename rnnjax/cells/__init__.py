"""Recurrent cells: one family per module, each a factory returning a `Cell`; `CELLS` names
the families the command line offers (factory(H, **options) -> Cell)."""

from collections.abc import Callable

from rnnjax.cells.base import ACTIVATIONS, Cell, LSTMCarry, RNNCarry, Structure, make_cell
from rnnjax.cells.gru import GRUConfig, GRUParams, gru
from rnnjax.cells.layer_norm import (
    LayerNormConfig,
    LayerNormGRUParams,
    LayerNormLSTMParams,
    layer_norm_gru,
    layer_norm_lstm,
)
from rnnjax.cells.linear import (
    DiagonalLinearRNNParams,
    LinearCellConfig,
    MinGRUParams,
    MinLSTMParams,
    diagonal_linear_rnn,
    min_gru,
    min_lstm,
)
from rnnjax.cells.lstm import LSTMConfig, LSTMParams, lstm
from rnnjax.cells.lstmp import LSTMPConfig, LSTMPParams, lstmp
from rnnjax.cells.multiplicative import (
    MultiplicativeRNNConfig,
    MultiplicativeRNNParams,
    multiplicative_rnn,
)
from rnnjax.cells.simple_rnn import SimpleRNNConfig, SimpleRNNParams, simple_rnn

CELLS: dict[str, Callable[..., Cell]] = {  # the families `rnnjax train --cell` and `analyze` name
    "simple_rnn": simple_rnn,
    "lstm": lstm,
    "gru": gru,
    "multiplicative_rnn": lambda H, **kw: multiplicative_rnn(H, factors=H, **kw),
    "min_gru": min_gru,
    "min_lstm": min_lstm,
}

__all__ = [
    "ACTIVATIONS",
    "CELLS",
    "Cell",
    "DiagonalLinearRNNParams",
    "GRUConfig",
    "GRUParams",
    "LSTMCarry",
    "LSTMConfig",
    "LSTMPConfig",
    "LSTMPParams",
    "LSTMParams",
    "LayerNormConfig",
    "LayerNormGRUParams",
    "LayerNormLSTMParams",
    "LinearCellConfig",
    "MinGRUParams",
    "MinLSTMParams",
    "MultiplicativeRNNConfig",
    "MultiplicativeRNNParams",
    "RNNCarry",
    "SimpleRNNConfig",
    "SimpleRNNParams",
    "Structure",
    "diagonal_linear_rnn",
    "gru",
    "layer_norm_gru",
    "layer_norm_lstm",
    "lstm",
    "lstmp",
    "make_cell",
    "min_gru",
    "min_lstm",
    "multiplicative_rnn",
    "simple_rnn",
]
