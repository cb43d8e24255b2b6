"""Recurrent cells: one family per module, each a factory returning a `Cell`."""

from rnnjax.cells.base import ACTIVATIONS, Cell, LSTMCarry, RNNCarry
from rnnjax.cells.gru import GRUParams, gru
from rnnjax.cells.linear import (
    DiagonalLinearRNNParams,
    MinGRUParams,
    MinLSTMParams,
    diagonal_linear_rnn,
    min_gru,
    min_lstm,
)
from rnnjax.cells.lstm import LSTMParams, lstm
from rnnjax.cells.multiplicative import MultiplicativeRNNParams, multiplicative_rnn
from rnnjax.cells.simple_rnn import SimpleRNNParams, simple_rnn

__all__ = [
    "ACTIVATIONS",
    "Cell",
    "DiagonalLinearRNNParams",
    "GRUParams",
    "LSTMCarry",
    "LSTMParams",
    "MinGRUParams",
    "MinLSTMParams",
    "MultiplicativeRNNParams",
    "RNNCarry",
    "SimpleRNNParams",
    "diagonal_linear_rnn",
    "gru",
    "lstm",
    "min_gru",
    "min_lstm",
    "multiplicative_rnn",
    "simple_rnn",
]
