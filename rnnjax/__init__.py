"""rnnjax: functional recurrent networks in JAX.

    import rnnjax as rj
    cell = rj.lstm(hidden_size=256)
    params = cell.init(key, input_size=128)
    carry, ys = rj.unroll(cell, params, xs)        # xs: (B, T, D)

LSTM gates are ordered (i, f, g, o) everywhere, as in PyTorch and jax.experimental.rnn.
"""

from rnnjax import initializers
from rnnjax.cells import (
    ACTIVATIONS,
    Cell,
    GRUParams,
    LSTMCarry,
    LSTMParams,
    MultiplicativeRNNParams,
    RNNCarry,
    SimpleRNNParams,
    gru,
    lstm,
    multiplicative_rnn,
    simple_rnn,
)
from rnnjax.driver import reverse_within_lengths, unroll

__version__ = "0.1.0"

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
    "initializers",
    "lstm",
    "multiplicative_rnn",
    "reverse_within_lengths",
    "simple_rnn",
    "unroll",
]
