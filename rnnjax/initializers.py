"""Weight initialisers: the library defaults and the named schemes of the RNN literature.

Every factory takes ``input_init``, ``recurrent_init`` and ``bias_init`` arguments with the
signature of ``jax.nn.initializers`` (``init(key, shape, dtype) -> array``). The defaults are
LeCun-normal for U, orthogonal (per gate block) for W and zeros for b.

The named schemes of Pascanu, Mikolov & Bengio (2013), section 4 and their code
(pascanur/trainingRNNs), where "N(0, s)" means standard deviation s:

- ``"sigmoid"``: sigmoid units, every weight ~ N(0, 0.01), biases 0.
- ``"basic_tanh"``: tanh units, every weight ~ N(0, 0.1), biases 0.
- ``"smart_tanh"``: tanh units, U ~ N(0, 0.01); W sparse with 15 non-zeros in each row —
  each unit's *outgoing* weights, as ``W_hh[dx][spng[15:]] = 0`` with ``h @ W_hh`` in the
  paper's code — then rescaled to spectral radius 0.95; biases 0.

The readout V of those networks is N(0, 0.01) (sigmoid, smart_tanh) or N(0, 0.1) (basic_tanh):
`readout_init` gives it (``rnnjax.train`` uses it for a model built with ``init=NAME``).

and ``"irnn"`` (Le, Jaitly & Hinton 2015): ReLU units, W = I, U ~ N(0, 0.001), biases 0.

Example::

    cell = rj.simple_rnn(50, **rj.initializers.scheme("smart_tanh"))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

default_input_init = jax.nn.initializers.lecun_normal()
default_recurrent_init = jax.nn.initializers.orthogonal()
default_bias_init = jax.nn.initializers.zeros


def normal(stddev: float):
    """W_ij ~ N(0, stddev²)."""
    return jax.nn.initializers.normal(stddev)


def identity(scale: float = 1.0):
    """W = scale · I for square shapes (IRNN). Raises ValueError for non-square shapes."""

    def init(key, shape, dtype=jnp.float32):
        del key
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"identity init needs a square (n, n) shape, got {shape=}")
        return scale * jnp.eye(shape[0], dtype=dtype)

    return init


def spectral_radius(radius: float, nonzeros: int | None = None):
    """A random matrix rescaled so that its spectral radius ρ(W) = ``radius`` exactly.

    Args:
        radius: the target spectral radius (largest |eigenvalue|).
        nonzeros: if given, each row keeps only this many non-zero entries — with the
            library's ``c_{t-1} @ W`` row i holds unit i's outgoing weights, as in Pascanu's
            code for "smart tanh" (15 per row); otherwise the matrix is dense N(0, 1/n).

    The eigenvalues are computed on the host with numpy at init time (square shapes only).
    """
    if radius < 0:
        raise ValueError(f"spectral radius must be >= 0, got {radius=}")

    def init(key, shape, dtype=jnp.float32):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"spectral_radius init needs a square shape, got {shape=}")
        n = shape[0]
        k_values, k_mask = jax.random.split(key)
        w = np.asarray(jax.random.normal(k_values, (n, n), jnp.float32), np.float64)
        if nonzeros is None:
            w /= np.sqrt(n)
        else:
            if not 0 < nonzeros <= n:
                raise ValueError(f"nonzeros must be in [1, {n}], got {nonzeros=}")
            scores = np.asarray(jax.random.uniform(k_mask, (n, n)))
            keep = np.argsort(scores, axis=1)[:, :nonzeros]  # (n, nonzeros) columns per row
            mask = np.zeros((n, n), bool)
            np.put_along_axis(mask, keep, True, axis=1)
            w = np.where(mask, w, 0.0)
        rho = np.max(np.abs(np.linalg.eigvals(w)))
        if rho == 0:
            return jnp.zeros(shape, dtype)
        return jnp.asarray(w * (radius / rho), dtype)

    return init


_SCHEMES: dict[str, dict[str, Any]] = {
    "sigmoid": dict(
        activation="sigmoid",
        input_init=normal(0.01),
        recurrent_init=normal(0.01),
        bias_init=jax.nn.initializers.zeros,
    ),
    "basic_tanh": dict(
        activation="tanh",
        input_init=normal(0.1),
        recurrent_init=normal(0.1),
        bias_init=jax.nn.initializers.zeros,
    ),
    "smart_tanh": dict(
        activation="tanh",
        input_init=normal(0.01),
        recurrent_init=spectral_radius(0.95, nonzeros=15),
        bias_init=jax.nn.initializers.zeros,
    ),
    "irnn": dict(
        activation="relu",
        input_init=normal(0.001),
        recurrent_init=identity(1.0),
        bias_init=jax.nn.initializers.zeros,
    ),
}

SCHEMES = tuple(_SCHEMES)
_READOUT_STD = {"sigmoid": 0.01, "basic_tanh": 0.1, "smart_tanh": 0.01}


def readout_init(name: str | None):
    """The initialiser of the readout V that goes with a named scheme.

    Pascanu et al.'s code draws W_hy ~ N(0, 0.01) for "sigmoid" and "smart_tanh" and
    N(0, 0.1) for "basic_tanh"; other schemes (and None) keep the library's LeCun-normal.

    Args:
        name: a scheme name of `SCHEMES`, None, "default", "rho=R" or "chrono=T" (the last
            four: LeCun).
    """
    if (
        name is not None
        and name != "default"
        and not name.startswith(("rho=", "chrono="))
        and name not in _SCHEMES
    ):
        raise ValueError(f"unknown init scheme {name=}; choose one of {SCHEMES}")
    if name in _READOUT_STD:
        return normal(_READOUT_STD[name])
    return jax.nn.initializers.lecun_normal()


def scheme(name: str) -> dict[str, Any]:
    """Keyword arguments for `rnnjax.simple_rnn` that reproduce a named initialisation scheme.

    Args:
        name: one of ``"sigmoid"``, ``"basic_tanh"``, ``"smart_tanh"``, ``"irnn"``.

    Returns:
        A dict with ``activation``, ``input_init``, ``recurrent_init`` and ``bias_init``.
    """
    if name not in _SCHEMES:
        raise ValueError(f"unknown init scheme {name=}; choose one of {SCHEMES}")
    return dict(_SCHEMES[name])


SQUARE_RECURRENCE = ("simple_rnn", "lstm", "gru")  # cells with a square W per gate block
CHRONO = ("lstm",)  # cells with a chrono_init argument (as the train command names them)


def for_cell(cell: str, init: str | None) -> dict[str, Any]:
    """The cell factory's keyword arguments for an ``--init`` value (one rule for every command).

    Args:
        cell: the cell family ("simple_rnn", "lstm", ...).
        init: None or "default" (the factory's own defaults); a scheme of `SCHEMES`
            (Simple RNN only: a scheme sets the activation too); ``"rho=R"``: every
            recurrent block rescaled to spectral radius R (cells of `SQUARE_RECURRENCE`); or
            ``"chrono=T"``: the LSTM's chrono initialisation for dependencies up to T steps
            (``chrono_init=T``, Tallec & Ollivier 2018; cells of `CHRONO`).

    Returns:
        Keyword arguments for the factory (empty for the defaults).

    Raises:
        ValueError: an unknown value, or one that does not apply to ``cell``.
    """
    if init is None or init == "default":
        return {}
    if init.startswith("rho="):
        try:
            rho = float(init[4:])
        except ValueError:
            raise ValueError(f"init {init!r}: rho must be a number, e.g. rho=1.5") from None
        if not rho >= 0:
            raise ValueError(f"init {init!r}: rho must be >= 0")
        if cell not in SQUARE_RECURRENCE:
            raise ValueError(
                f"init {init!r} rescales a square recurrent matrix; the {cell} cell has none "
                f"(it applies to {', '.join(SQUARE_RECURRENCE)})"
            )
        return {"recurrent_init": spectral_radius(rho)}
    if init.startswith("chrono="):
        if not init[7:].isdigit() or int(init[7:]) <= 2:
            raise ValueError(f"init {init!r}: T must be an integer > 2, e.g. chrono=500")
        if cell not in CHRONO:
            raise ValueError(
                f"init {init!r} draws an LSTM's gate biases; it does not apply to {cell} "
                f"(it applies to {', '.join(CHRONO)})"
            )
        return {"chrono_init": int(init[7:])}
    if init not in _SCHEMES:
        raise ValueError(
            f"unknown init {init!r}; choose default, one of {', '.join(SCHEMES)}, rho=R or chrono=T"
        )
    if cell != "simple_rnn":
        raise ValueError(
            f"init {init!r} is a Simple RNN scheme (it sets the activation too); it does not "
            f"apply to {cell}: use default or rho=R"
        )
    return scheme(init)
