"""The `Cell` contract shared by every recurrent cell, and the small helpers they use.

A cell is a NamedTuple of pure functions, built by a lowercase factory that closes over the
hyper-parameters (like an optax ``GradientTransformation``)::

    cell = rj.lstm(hidden_size=256)
    params = cell.init(key, input_size=128)              # NamedTuple of arrays
    carry = cell.initial_carry(params, batch_shape=(32,))
    px = cell.project(params, xs)                        # (..., T, D) -> (..., T, G): x_t U + b
    carry, y = cell.recur(params, carry, px[..., t, :])  # one step of c_t = h(x_t, c_{t-1}; θ)
    carry, y = cell.step(params, carry, x_t)             # = recur ∘ project

Cells are written for one example; any leading axes are batch axes (``vmap`` works too).
``project`` is the input-side affine map, applied to a whole sequence in one matmul so that
only ``recur`` runs inside the time loop (the hoisting that cuDNN does, Appleyard et al. 2016).

The structured form
-------------------
Most recurrent cells take one step as "the previous output times a recurrent matrix, then
element-wise maths". Such a cell says so with a `Structure` (``cell.structure``), and its
``recur`` is *defined* from it (`structured_recur`)::

    hw_t          = h_{t-1} W                                   (…, K·H): ONE matmul
    carry_t, y_t  = pointwise(unit_params, carry_{t-1}, px_t, hw_t)

where px_t and hw_t are passed to ``pointwise`` as tuples of K gate blocks of shape (…, H)
(block k is columns k·H … (k+1)·H of px_t and of W), ``unit_params`` is a tuple of per-unit
vectors of shape (H,) (peepholes, a recurrent bias, layer-norm gains, …), and the first
leaf of the carry is h_t, which is also the output y_t. Every fast backend
(`rnnjax.kernels`) and the analysis tools derive their forward and backward from these
pieces — the backward step is the VJP of ``pointwise``, dW = Σ_t h_{t-1}ᵀ dhw_t is one matmul
after the loop — so a cell written by a user in the structured form gets the fast paths
without kernel code (see tests/test_custom_cell.py). A cell without a structure (the
multiplicative RNN, whose W depends on x_t; any cell that only gives ``recur``) runs on the
``"scan"`` backend, and the fast backends refuse it with the reason.

``Structure.elementwise`` promises more: output unit u reads only unit u of every gate block,
of every carry leaf and of every unit parameter (true of the Simple RNN, LSTM, GRU). Kernels
that split the hidden units across programs (``"pallas"``) and the closed-form Jacobians of
`rnnjax.analysis` need it; a cell whose pointwise mixes units (a layer norm over H) sets it
to False and still runs on ``"fused"``.

Dtypes
------
``param_dtype`` (float32 by default) is the dtype of the parameters; ``dtype`` is an optional
compute dtype for the matmuls (e.g. bfloat16 operands, accumulated in the result dtype).
Carries and outputs take ``jnp.result_type`` of the inputs and the parameters
(`carry_dtype`): float32 params and inputs give float32, float64 inputs under x64 give
float64, bfloat16 params with bfloat16 inputs give bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a NamedTuple of arrays
Carry = Any  # a NamedTuple of (..., H) arrays, h first
Initializer = Callable[..., Array]


class RNNCarry(NamedTuple):
    """Carry of the single-state cells (Simple RNN, GRU, multiplicative RNN, ...).

    Attributes:
        h: the memory c_t of the lecture, shape (..., H).
    """

    h: Array


class LSTMCarry(NamedTuple):
    """Carry of the LSTM: the output memory m_t (called h) and the cell state c_t.

    Attributes:
        h: m_t = o_t ⊙ tanh(c_t), shape (..., H).
        c: the cell state c_t, shape (..., H).
    """

    h: Array
    c: Array


# ---------------------------------------------------------------------------------------------
# The function fields, typed (optax-style Protocols)
# ---------------------------------------------------------------------------------------------


class InitFn(Protocol):
    def __call__(self, key: PRNGKey, input_size: int, /) -> Params:
        """``(key, input_size D) -> params``."""
        ...


class InitialCarryFn(Protocol):
    def __call__(self, params: Params, batch_shape: tuple[int, ...] = (), /) -> Carry:
        """``(params, batch_shape) -> carry`` of zeros, leaves (*batch_shape, H)."""
        ...


class ProjectFn(Protocol):
    def __call__(self, params: Params, xs: Array, /) -> Array:
        """``(params, xs (..., D)) -> px (..., G)``: the input side, hoisted out of the loop."""
        ...


class RecurFn(Protocol):
    def __call__(self, params: Params, carry: Carry, px_t: Array, /) -> tuple[Carry, Array]:
        """``(params, carry, px_t (..., G)) -> (carry, y_t (..., H))``: one step."""
        ...


class StepFn(Protocol):
    def __call__(self, params: Params, carry: Carry, x_t: Array, /) -> tuple[Carry, Array]:
        """``(params, carry, x_t (..., D)) -> (carry, y_t)`` = recur ∘ project."""
        ...


class RecurrentWeightsFn(Protocol):
    def __call__(self, params: Params, /) -> Array | None:
        """``params -> W`` (H, K·H), or None for a cell without a recurrent matrix."""
        ...


class UnitParamsFn(Protocol):
    def __call__(self, params: Params, /) -> tuple[Array, ...]:
        """``params -> (v_1, …, v_P)``, each (H,): the per-unit vectors ``pointwise`` reads."""
        ...


class PointwiseFn(Protocol):
    def __call__(
        self,
        unit_params: tuple[Array, ...],
        carry: Carry,
        px: tuple[Array, ...],
        hw: tuple[Array, ...] | None,
        /,
    ) -> tuple[Carry, Array]:
        """``(unit_params, carry_{t-1}, px_t blocks, hw_t blocks) -> (carry_t, y_t = h_t)``."""
        ...


class LinearCoefficientsFn(Protocol):
    def __call__(
        self, unit_params: tuple[Array, ...], px: tuple[Array, ...], /
    ) -> tuple[Array, Array]:
        """``(unit_params, px blocks) -> (a, b)`` with ``h_t = a ⊙ h_{t-1} + b``."""
        ...


class Structure(NamedTuple):
    """The structured form of a cell's step (see the module docstring).

    Attributes:
        gates: K, the number of (…, H) blocks of px_t and of hw_t = h_{t-1} W.
        recurrent_weights: ``params -> W`` (H, K·H), or None: the cell has no recurrent
            matmul (hw is then None; the linear-in-carry cells).
        unit_params: ``params -> tuple`` of (H,) vectors read by ``pointwise``.
        pointwise: ``(unit_params, carry, px, hw) -> (carry, y)``: everything after the
            recurrent matmul; y must be the carry's first leaf (h).
        tied: per gate block, True where px_k and hw_k enter ``pointwise`` only as their sum
            px_k + hw_k (then a backward saves the sum and d px_k = d hw_k).
        elementwise: output unit u reads only unit u of every block, carry leaf and unit
            parameter (kernels that split units across programs need it).
        compute_dtype: operand dtype of the recurrent matmul (None: the result dtype).
        linear_coefficients: for cells linear in the carry, ``(unit_params, px) -> (a, b)``
            with ``h_t = a ⊙ h_{t-1} + b`` (the associative scan reads it); else None.
        memory_gate: for cells whose last carry leaf is carried from step to step by a gate
            (the LSTM's c_t = f ⊙ c_{t-1} + …, the GRU's h_t = z ⊙ h_{t-1} + …), the gate's
            name ("forget", "update", "decay"); the analysis reads that direct path's factor
            off ``pointwise``. None for cells without such a path (the Simple RNN).
    """

    gates: int
    recurrent_weights: RecurrentWeightsFn
    unit_params: UnitParamsFn
    pointwise: PointwiseFn
    tied: tuple[bool, ...]
    elementwise: bool = True
    compute_dtype: Any = None
    linear_coefficients: LinearCoefficientsFn | None = None
    memory_gate: str | None = None


class Cell(NamedTuple):
    """A recurrent cell as pure functions (see the module docstring).

    Attributes:
        init: ``(key, input_size) -> params``.
        initial_carry: ``(params, batch_shape=()) -> carry`` (zeros).
        project: ``(params, xs) -> px``; xs (..., D) -> px (..., G), hoisted out of the loop.
        recur: ``(params, carry, px_t) -> (carry, y_t)``; one step given the projected input.
        step: ``(params, carry, x_t) -> (carry, y_t)`` = recur ∘ project.
        name: a label for reports ("lstm", "gru", …); nothing dispatches on it.
        hidden_size: H, the size of the output y_t.
        config: the hyper-parameters the factory closed over (a frozen dataclass).
        structure: the structured form of ``recur`` (`Structure`), or None.
    """

    init: InitFn
    initial_carry: InitialCarryFn
    project: ProjectFn
    recur: RecurFn
    step: StepFn
    name: str
    hidden_size: int
    config: Any
    structure: Structure | None = None


def split_blocks(a: Array, gates: int) -> tuple[Array, ...]:
    """(…, K·H) -> K blocks of (…, H) (gate-major columns)."""
    return tuple(jnp.split(a, gates, axis=-1)) if gates > 1 else (a,)


def pointwise_inputs(
    structure: Structure, px: Array, hw: Array | None
) -> tuple[tuple[Array, ...], tuple[Array, ...] | None]:
    """``pointwise``'s (px, hw) blocks from the step's px (…, K·H) and hw = h_{t-1} W (or None).

    The tied blocks are passed as (z_k, 0) — the form a backward rebuilds from what it saved
    (XLA drops the zero additions) — and the leading run of tied blocks is summed as ONE array
    (…, k·H), e.g. all four of the LSTM's blocks, the GRU's r and z: a step does one add instead
    of one per block, the blocks a cell activates together are slices of one array, and a
    forward that saves the sums (the ``fused`` backend) writes that same array, which XLA:CPU
    then computes once instead of again inside the step's last fusion
    (``benchmarks/gru_fusion_probe.py``).
    """
    K = structure.gates
    if hw is None:
        return split_blocks(px, K), None
    tied = structure.tied
    lead = next((k for k in range(K) if not tied[k]), K)  # the leading tied blocks: one add
    H = px.shape[-1] // K
    px_b, hw_b = split_blocks(px, K), split_blocks(hw, K)
    z_lead = split_blocks(px[..., : lead * H] + hw[..., : lead * H], lead) if lead else ()

    def block(k: int) -> tuple[Array, Array]:  # (px_k, hw_k) as pointwise gets them
        if tied[k]:
            z_k = z_lead[k] if k < lead else px_b[k] + hw_b[k]  # (…, H)
            return z_k, jnp.zeros_like(z_k)
        return px_b[k], hw_b[k]

    pairs = [block(k) for k in range(K)]
    return tuple(p for p, _ in pairs), tuple(h for _, h in pairs)


def structured_recur(structure: Structure) -> RecurFn:
    """``recur`` defined from a `Structure`: hw = h_{t-1} W, then ``pointwise``.

    This is the readable reference every fast backend equals.
    """

    def recur(params: Params, carry: Carry, px: Array, /) -> tuple[Carry, Array]:
        W = structure.recurrent_weights(params)
        hw = None
        if W is not None:
            h = jax.tree.leaves(carry)[0]  # (..., H)
            hw = matmul(h, W, structure.compute_dtype)  # (..., K·H)
        up = structure.unit_params(params)
        return structure.pointwise(up, carry, *pointwise_inputs(structure, px, hw))

    return recur


def make_cell(
    *,
    name: str,
    hidden_size: int,
    config: Any,
    init: InitFn,
    initial_carry: InitialCarryFn,
    project: ProjectFn,
    recur: RecurFn | None = None,
    structure: Structure | None = None,
) -> Cell:
    """Builds a `Cell`, deriving ``step = recur ∘ project`` (and ``recur`` from ``structure``).

    Give either ``recur`` (any cell; it runs on the ``"scan"`` backend) or ``structure`` (the
    structured form; ``recur`` is derived from it and the fast backends apply).
    """
    if (recur is None) == (structure is None):
        raise ValueError("make_cell needs exactly one of recur= and structure=")
    if structure is not None:
        if len(structure.tied) != structure.gates:
            raise ValueError(
                f"Structure.tied has {len(structure.tied)} entries for {structure.gates} gates"
            )
        recur = structured_recur(structure)
    assert recur is not None
    run = recur

    def step(params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
        from rnnjax.cells.checks import check_step  # checks imports this module

        carry, x_t = check_step(cell, params, carry, x_t)
        return run(params, carry, project(params, x_t))

    cell = Cell(
        init=init,
        initial_carry=initial_carry,
        project=project,
        recur=recur,
        step=step,
        name=name,
        hidden_size=hidden_size,
        config=config,
        structure=structure,
    )
    return cell


def carry_dtype(params: Params, xs_dtype: Any) -> Any:
    """The dtype of carries and outputs: ``jnp.result_type`` of the inputs and float params."""
    floats = [
        leaf.dtype
        for leaf in jax.tree.leaves(params)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    return jnp.result_type(xs_dtype, *floats)


def check_positive(name: str, value: int) -> int:
    """Returns ``value`` if it is a positive int, else raises a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return value


def check_compute_dtype(dtype: Any) -> Any:
    """Validates the optional compute dtype of the matmuls (None = float32 throughout)."""
    if dtype is None:
        return None
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"compute dtype must be a floating dtype, got {dtype=}")
    return dtype


def check_param_dtype(dtype: Any) -> Any:
    """Validates a ``param_dtype`` (a floating dtype; float32 by default)."""
    dtype = jnp.dtype(jnp.float32 if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"param_dtype must be a floating dtype, got {dtype=}")
    return dtype


def matmul(a: Array, w: Array, compute_dtype: Any = None) -> Array:
    """``a @ w`` with optional low-precision operands, accumulated in the result dtype.

    Args:
        a: (..., K) activations.
        w: (K, N) weights.
        compute_dtype: e.g. ``jnp.bfloat16`` to run the matmul on bfloat16 operands; None
            multiplies in ``jnp.result_type(a, w)``.

    Returns:
        (..., N) of dtype ``jnp.result_type(a, w)``.
    """
    if compute_dtype is None:
        return a @ w
    out = jnp.result_type(a, w)
    return jnp.matmul(a.astype(compute_dtype), w.astype(compute_dtype), preferred_element_type=out)


def gate_blocks(
    init_fn: Initializer, key: PRNGKey, rows: int, cols: int, gates: int, dtype: Any = jnp.float32
) -> Array:
    """Initialises a (rows, gates·cols) matrix one (rows, cols) gate block at a time.

    Orthogonal and identity initialisers are meant for each square recurrent block, not for
    the concatenation of all gates, so the recurrent matrices are built block by block.
    """
    keys = jax.random.split(key, gates)
    return jnp.concatenate([initialise(init_fn, k, (rows, cols), dtype) for k in keys], axis=-1)


def initialise(init_fn: Initializer, key: PRNGKey, shape: tuple[int, ...], dtype: Any) -> Array:
    """``init_fn(key, shape)`` drawn in float32 (float64 for float64) and cast to ``dtype``.

    Initialisers that factorise (orthogonal: a QR) have no bfloat16 kernels, and drawing in
    float32 makes bfloat16 parameters the rounding of the float32 ones.
    """
    work = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
    return init_fn(key, shape, work).astype(dtype)


def zeros_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype: Any = jnp.float32) -> Array:
    """A zero state of shape (*batch_shape, hidden_size) (float64 only under x64)."""
    return jnp.zeros((*tuple(batch_shape), hidden_size), jax.dtypes.canonicalize_dtype(dtype))


# name -> (function, γ = sup |σ'(x)|, the constant of Pascanu et al.'s bound)
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], float]] = {
    "tanh": (jnp.tanh, 1.0),
    "sigmoid": (jax.nn.sigmoid, 0.25),
    "relu": (jax.nn.relu, 1.0),
    "identity": (lambda x: x, 1.0),
}


def resolve_activation(activation: str | Callable[[Array], Array]) -> tuple[str, Callable]:
    """Maps an activation name or function to ``(name, function)``.

    Strings must be one of `ACTIVATIONS`; a callable is used as is and named by its
    ``__name__`` (``jnp.tanh`` resolves to "tanh", so the analysis tools know its γ).
    """
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown {activation=}; choose one of {tuple(ACTIVATIONS)}")
        return activation, ACTIVATIONS[activation][0]
    if not callable(activation):
        raise ValueError(f"activation must be a name or a function, got {activation=}")
    name = getattr(activation, "__name__", repr(activation))
    for known, (fn, _) in ACTIVATIONS.items():
        if activation is fn:
            name = known
    return name, activation


def sigmoid(x: Array) -> Array:
    """σ(x) = ½·tanh(x/2) + ½ (equal to ``jax.nn.sigmoid`` to float rounding).

    Written with tanh because XLA:CPU's tanh is a fast vectorised polynomial and its logistic
    is not: inside a time loop the gate non-linearities cost more than the matmul.
    """
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def activate_blocks(blocks: Sequence[Array], is_sigmoid: Sequence[bool]) -> tuple[Array, ...]:
    """σ on the blocks where ``is_sigmoid``, tanh on the others, as one tanh over them all.

    With σ(x) = ½·tanh(x/2) + ½, the gates of a step are one tanh of the concatenated
    pre-activations (K blocks (…, H) -> one (…, K·H) pass) and a scale and shift per block:
    a single vectorised loop instead of K short ones, which is what a time loop pays for.
    """
    z = jnp.concatenate(blocks, axis=-1)  # (…, K·H); a no-op when the blocks are one array's
    halves = [
        jnp.full(b.shape[-1:], 0.5 if s else 1.0, z.dtype)
        for b, s in zip(blocks, is_sigmoid, strict=True)
    ]
    scale = expand(jnp.concatenate(halves), z)  # (1, …, K·H): ½ on the σ blocks, 1 on tanh
    activated = scale * jnp.tanh(scale * z) + (1.0 - scale)  # (…, K·H), one pass
    return split_blocks(activated, len(blocks))


def affine(a: Array, w: Array, b: Array, compute_dtype: Any = None) -> Array:
    """``a @ w + b``: (..., K) @ (K, N) + (N,) -> (..., N), e.g. a cell's input projection.

    The maths is that line. On CPU, when a, w and b share one float dtype and there is no
    compute dtype, it runs as `_one_gemm`: the bias rides in the matmul as one more row of w
    against a column of ones, so the forward is one GEMM (not a GEMM and a pass over the
    (..., N) result) and the reverse mode computes db in the same GEMM as dw, reading a
    transposed copy of a (XLA:CPU otherwise transposes the larger cotangent, (..., N), for
    dw = aᵀ d). A `jax.custom_jvp`: forward mode works too. Same result up to float rounding
    (tests/test_cells.py checks it, and its derivatives, against the plain expression).

    Args:
        a: (..., K) activations.
        w: (K, N) weights.
        b: (N,) bias.
        compute_dtype: as `matmul` (then the plain expression runs).

    Returns:
        (..., N) of dtype ``jnp.result_type(a, w, b)``.
    """
    if compute_dtype is not None or not (a.dtype == w.dtype == b.dtype) or a.ndim < 1:
        out = matmul(a, w, compute_dtype)
        return out + expand(b, out)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return a @ w + expand(b, a[..., :1])
    return jax.lax.platform_dependent(a, w, b, cpu=_one_gemm, default=_plain_affine)


def _plain_affine(a: Array, w: Array, b: Array) -> Array:
    out = a @ w  # (..., N)
    return out + expand(b, out)


@jax.custom_jvp
def _one_gemm(a: Array, w: Array, b: Array) -> Array:
    """``a @ w + b`` as ONE matmul: [a, 1] (M, K+1) @ [w; b] (K+1, N)."""
    a1 = _with_ones(a.reshape(-1, a.shape[-1]), axis=1)  # (M, K+1)
    out = a1 @ jnp.concatenate([w, b[None]], 0)  # (M, N)
    return out.reshape(*a.shape[:-1], w.shape[1])


def _with_ones(x: Array, axis: int) -> Array:
    """x with a row (axis 0) or column (axis 1) of ones appended."""
    shape = (1, x.shape[1]) if axis == 0 else (x.shape[0], 1)
    return jnp.concatenate([x, jnp.ones(shape, x.dtype)], axis)


# From this many input features on, XLA:CPU's transposed copy of [a, 1] costs more than it
# saves and the matmul reads [a, 1] in place: value and gradient of a (3200, D) x (D, 1024)
# projection, two runs of `python benchmarks/projection_probe.py --transposes`, in place
# against the copy: D = 256 4-10 % faster, D = 512 9-11 %; D = 128 and 192 within 4 % either
# way; D = 64 the copy 3-8 % faster.
TRANSPOSED_COPY_BELOW = 256


@_one_gemm.defjvp
def _one_gemm_jvp(primals, tangents):
    """d(a w + b) = da w + [a, 1] [dw; db], written so that its transpose (reverse mode)
    computes [dw; db] = [a, 1]ᵀ d as one matmul. Below `TRANSPOSED_COPY_BELOW` features it
    reads a transposed copy of [a, 1] (small): the barrier keeps XLA from folding that
    transpose into the dot, where XLA:CPU would transpose the larger d instead."""
    a, w, b = primals
    da, dw, db = tangents
    K = w.shape[0]
    a2, da2 = a.reshape(-1, K), da.reshape(-1, K)  # (M, K)
    if K < TRANSPOSED_COPY_BELOW:
        a1 = jax.lax.optimization_barrier(_with_ones(a2.T, axis=0)).T  # (M, K+1)
    else:
        a1 = _with_ones(a2, axis=1)  # (M, K+1)
    out = _one_gemm(a, w, b)
    dwb = jnp.concatenate([dw, db[None]], 0)  # (K+1, N)
    d_out = da2 @ w + a1 @ dwb  # (M, N)
    return out, d_out.reshape(out.shape)


def expand(v: Any, like: Array) -> Array:
    """Reshapes a vector (F,) to (1, ..., 1, F) with the rank of ``like``.

    Batching is by leading axes, and rnnjax runs with ``jax_numpy_rank_promotion="raise"``
    in its tests, so every bias / peephole vector is broadcast explicitly.
    """
    return v.reshape((1,) * (like.ndim - v.ndim) + v.shape)
