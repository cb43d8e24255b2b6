"""Test configuration: strict rank promotion, float32 and helpers shared by the tests."""

import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

import rnnjax as rj  # noqa: E402  (after the config update on purpose)

# Every cell variant the library offers, built small; tests parametrise over these names.
CELL_FACTORIES = {
    "simple_rnn": lambda H: rj.simple_rnn(H),
    "simple_rnn_relu": lambda H: rj.simple_rnn(H, activation="relu"),
    "lstm": lambda H: rj.lstm(H),
    "lstm_peephole": lambda H: rj.lstm(H, peephole=True, peephole_init=_normal),
    "lstm_coupled": lambda H: rj.lstm(H, coupled=True),
    "lstm_peephole_coupled": lambda H: rj.lstm(
        H, peephole=True, coupled=True, peephole_init=_normal
    ),
    "gru": lambda H: rj.gru(H),
    "gru_cho": lambda H: rj.gru(H, reset_after=False),
    "multiplicative_rnn": lambda H: rj.multiplicative_rnn(H, factors=H + 1),
}

_normal = jax.nn.initializers.normal(0.5)


def random_like(key, tree, scale=0.5):
    """Replaces every leaf of ``tree`` with fresh N(0, scale²) values (so no bias is zero)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [
            scale * jax.random.normal(k, jnp.shape(x), jnp.float32)
            for k, x in zip(keys, leaves, strict=True)
        ]
    )


@pytest.fixture
def rng(request):
    """A key per test, derived from the test's id: the same draw on every run (a suite that
    passes once passes again). RNNJAX_TEST_SEED=random draws fresh seeds to explore; an
    integer there is mixed into every test's seed."""
    extra = os.environ.get("RNNJAX_TEST_SEED", "0")
    if extra == "random":
        extra = str(np.random.SeedSequence().entropy)
    seed = zlib.crc32(f"{request.node.nodeid}:{extra}".encode()) % (2**31)
    print(f"{request.node.name}: rng seed {seed}")  # shown by pytest when the test fails
    return jax.random.key(seed)
