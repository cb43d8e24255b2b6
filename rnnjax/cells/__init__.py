"""Recurrent cells: one family per module, each a factory returning a `Cell`."""

from rnnjax.cells.base import ACTIVATIONS, Cell, LSTMCarry, RNNCarry
from rnnjax.cells.gru import GRUParams, gru
from rnnjax.cells.lstm import LSTMParams, lstm
from rnnjax.cells.multiplicative import MultiplicativeRNNParams, multiplicative_rnn
from rnnjax.cells.simple_rnn import SimpleRNNParams, simple_rnn

__all__ = [
    "ACTIVATIONS",
    "Cell",
    "GRUParams",
    "LSTMCarry",
    "LSTMParams",
    "MultiplicativeRNNParams",
    "RNNCarry",
    "SimpleRNNParams",
    "gru",
    "lstm",
    "multiplicative_rnn",
    "simple_rnn",
]
