"""rnnjax: functional recurrent networks in JAX.

    import rnnjax as rj
    cell = rj.lstm(hidden_size=256)
    params = cell.init(key, input_size=128)
    carry, ys = rj.unroll(cell, params, xs)        # xs: (B, T, D)

LSTM gates are ordered (i, f, g, o) everywhere, as in PyTorch and jax.experimental.rnn.
"""

from rnnjax import (
    allocator,
    analysis,
    data,
    export,
    initializers,
    interop,
    losses,
    regularise,
    streaming,
    train,
)
from rnnjax.cells import (
    ACTIVATIONS,
    Cell,
    DiagonalLinearRNNParams,
    GRUParams,
    LSTMCarry,
    LSTMParams,
    LSTMPParams,
    MinGRUParams,
    MinLSTMParams,
    MultiplicativeRNNParams,
    RNNCarry,
    SimpleRNNParams,
    Structure,
    diagonal_linear_rnn,
    gru,
    layer_norm_gru,
    layer_norm_lstm,
    lstm,
    lstmp,
    make_cell,
    min_gru,
    min_lstm,
    multiplicative_rnn,
    simple_rnn,
)
from rnnjax.driver import reverse_within_lengths, unroll
from rnnjax.layers import bidirectional, embedding, readout, stacked
from rnnjax.losses import bits_per_char, perplexity, sequence_cross_entropy
from rnnjax.regularise import regularised, with_key
from rnnjax.rnn_layer import rnn
from rnnjax.tokens import Tokens

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Cell",
    "DiagonalLinearRNNParams",
    "GRUParams",
    "LSTMCarry",
    "LSTMPParams",
    "LSTMParams",
    "MinGRUParams",
    "MinLSTMParams",
    "MultiplicativeRNNParams",
    "RNNCarry",
    "SimpleRNNParams",
    "Structure",
    "Tokens",
    "allocator",
    "analysis",
    "bidirectional",
    "bits_per_char",
    "data",
    "diagonal_linear_rnn",
    "embedding",
    "export",
    "gru",
    "initializers",
    "interop",
    "layer_norm_gru",
    "layer_norm_lstm",
    "losses",
    "lstm",
    "lstmp",
    "make_cell",
    "min_gru",
    "min_lstm",
    "multiplicative_rnn",
    "perplexity",
    "readout",
    "regularise",
    "regularised",
    "reverse_within_lengths",
    "rnn",
    "sequence_cross_entropy",
    "simple_rnn",
    "stacked",
    "streaming",
    "train",
    "unroll",
    "with_key",
]
