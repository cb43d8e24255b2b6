"""Weight conversion from PyTorch and Flax layouts to rnnjax params (arrays only).

PyTorch stores ``weight_ih (G·H, D)`` and ``weight_hh (G·H, H)`` with gate rows (i, f, g, o)
for LSTM and (r, z, n) for GRU, and two biases ``b_ih + b_hh``. Flax linen stores one
``Dense`` per gate with kernels (in, out): ``i{i,f,g,o}`` / ``h{i,f,g,o}`` for LSTM,
``i{r,z,n}`` / ``h{r,z,n}`` for GRU, ``i`` / ``h`` for SimpleCell. rnnjax stores one
(in, G·H) matrix per side with the same gate order as PyTorch, so conversion is transposes
and concatenations. PyTorch itself is never imported: any array-like (numpy, torch tensor on
CPU) works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from rnnjax.cells.base import Cell
from rnnjax.cells.gru import GRUParams
from rnnjax.cells.lstm import LSTMParams
from rnnjax.cells.simple_rnn import SimpleRNNParams


def _array(value: Any) -> np.ndarray:
    """A float32 numpy array from a numpy array, jax array or (CPU) torch tensor."""
    if hasattr(value, "detach"):  # a torch tensor: leave autograd without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _check_family(cell: Cell, supported: tuple[str, ...], source: str) -> None:
    if cell.name not in supported:
        raise ValueError(f"{source} conversion supports {supported} cells, got {cell.name=}")
    if cell.name == "lstm" and (cell.config.peephole or cell.config.coupled):
        raise ValueError(
            f"{source} LSTMs have neither peepholes nor coupled gates; build the cell with "
            f"peephole=False, coupled=False (got {cell.config})"
        )
    if cell.name == "gru" and not cell.config.reset_after:
        raise ValueError(
            f"{source} GRUs apply the reset gate after the matmul: use reset_after=True"
        )


def _gates(cell: Cell) -> int:
    return {"simple_rnn": 1, "lstm": 4, "gru": 3}[cell.name]


_TORCH_MODULES = {1: "nn.RNN", 3: "nn.GRU", 4: "nn.LSTM"}
_TORCH_CELLS = {1: "simple_rnn", 3: "gru", 4: "lstm"}


def _check_mapping(value: Any, function: str, wanted: str) -> None:
    """ValueError unless ``value`` is a mapping (a module passed instead of its weights)."""
    if isinstance(value, Mapping):
        return
    hint = ""
    if hasattr(value, "state_dict"):
        hint = " module: pass its .state_dict(), not the module itself"
    raise ValueError(f"{function} needs {wanted}, a mapping; got a {type(value).__name__}{hint}")


def _check_source(cell: Cell, gates: float, hidden: int, seen: str) -> None:
    """ValueError if the weights are of another family or hidden size than ``cell``.

    Args:
        gates: the number of gate blocks in the weights (G / H; not an integer for weights of
            no RNN layer).
        hidden: their hidden size H.
        seen: the array that shows it, for the message (e.g. "weight_hh_l0 (64, 16)").
    """
    if gates != _gates(cell):
        source = f"{gates:g} gate blocks of H={hidden}"
        if gates in _TORCH_MODULES:
            source = (
                f"an {_TORCH_MODULES[int(gates)]} layer ({source}; convert it into "
                f"rj.{_TORCH_CELLS[int(gates)]}({hidden}))"
            )
        raise ValueError(
            f"the weights ({seen}) are {source}, but the cell is {cell.name}, which has "
            f"{_gates(cell)} gate block{'s' if _gates(cell) > 1 else ''}"
        )
    if hidden != cell.hidden_size:
        raise ValueError(
            f"the weights have hidden size H={hidden} ({seen}) but the cell is "
            f"{cell.name} with hidden_size={cell.hidden_size}"
        )


def _assemble(cell: Cell, U: np.ndarray, W: np.ndarray, b: np.ndarray, b_hn=None):
    """Checks shapes against the cell and builds its params NamedTuple."""
    H, G = cell.hidden_size, _gates(cell) * cell.hidden_size
    if W.shape != (H, G) or U.shape[1] != G or b.shape != (G,):
        raise ValueError(
            f"weights do not fit a {cell.name} cell with hidden_size={H}: got U {U.shape}, "
            f"W {W.shape}, b {b.shape}; expected (D, {G}), ({H}, {G}), ({G},)"
        )
    arrays = dict(U=jnp.asarray(U), W=jnp.asarray(W), b=jnp.asarray(b))
    if cell.name == "simple_rnn":
        return SimpleRNNParams(**arrays)
    if cell.name == "lstm":
        return LSTMParams(**arrays)
    return GRUParams(**arrays, b_hn=jnp.asarray(b_hn))


def from_torch(
    cell: Cell, state_dict: Mapping[str, Any], layer: int = 0, reverse: bool = False
) -> Any:
    """Converts one layer (and direction) of a PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``.

    Args:
        cell: the rnnjax cell to fill (``simple_rnn`` with the same nonlinearity, ``lstm``
            without peepholes / coupling, or ``gru`` with ``reset_after=True``).
        state_dict: the module's ``state_dict()`` (tensors or arrays).
        layer: which layer of a multi-layer module (the ``_l{layer}`` suffix).
        reverse: take the backward direction of a bidirectional module (``_reverse``).

    Returns:
        The cell's params.

    Example:
        >>> params = from_torch(rj.lstm(128), torch_lstm.state_dict())
    """
    _check_family(cell, ("simple_rnn", "lstm", "gru"), "PyTorch")
    _check_mapping(state_dict, "from_torch", "the module's state_dict()")
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    name = f"weight_ih{suffix}"
    if name not in state_dict:
        raise ValueError(f"state_dict has no {name!r}; its keys are {sorted(state_dict)}")
    if f"weight_hr{suffix}" in state_dict:
        raise ValueError("LSTMs with proj_size > 0 (weight_hr) are not supported")
    w_ih = _array(state_dict[f"weight_ih{suffix}"])  # (G, D)
    w_hh = _array(state_dict.get(f"weight_hh{suffix}", np.zeros((0,), np.float32)))  # (G, H)
    if w_ih.ndim != 2 or w_hh.ndim != 2 or w_hh.shape[0] != w_ih.shape[0] or not w_hh.size:
        raise ValueError(
            f"state_dict has weight_ih{suffix} {w_ih.shape} and weight_hh{suffix} "
            f"{w_hh.shape}; a PyTorch RNN layer has (G·H, D) and (G·H, H)"
        )
    G, H = w_hh.shape
    _check_source(cell, G / H, H, f"weight_hh{suffix} {w_hh.shape}")
    zeros = np.zeros((G,), np.float32)
    b_ih = _array(state_dict.get(f"bias_ih{suffix}", zeros))  # (G,)
    b_hh = _array(state_dict.get(f"bias_hh{suffix}", zeros))  # (G,)
    for bias_name, bias in ((f"bias_ih{suffix}", b_ih), (f"bias_hh{suffix}", b_hh)):
        if bias.shape != (G,):
            raise ValueError(f"state_dict has {bias_name} {bias.shape}; expected ({G},)")
    if cell.name == "gru":
        b = b_ih + np.concatenate([b_hh[: 2 * H], np.zeros((H,), np.float32)])
        return _assemble(cell, w_ih.T, w_hh.T, b, b_hn=b_hh[2 * H :])
    return _assemble(cell, w_ih.T, w_hh.T, b_ih + b_hh)


_FLAX_GATES = {"simple_rnn": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
_FLAX_CELLS = {"simple_rnn": "SimpleCell", "lstm": "LSTMCell", "gru": "GRUCell"}


def _flax_keys(family: str) -> list[str]:
    return [side + gate for gate in _FLAX_GATES[family] for side in "ih"]


def from_flax(cell: Cell, params: Mapping[str, Any]) -> Any:
    """Converts the params of a flax linen ``SimpleCell``, ``LSTMCell``,
    ``OptimizedLSTMCell`` or ``GRUCell``.

    Flax's LSTM carry is ``(c, h)`` where rnnjax's is ``LSTMCarry(h, c)``: swap when moving
    carries. Biases of the input and hidden ``Dense`` layers are summed, except the GRU's
    ``hn`` bias, which sits inside the reset product and becomes ``b_hn``.

    Args:
        cell: the rnnjax cell to fill.
        params: the cell's variables (``{"params": {...}}``) or their ``"params"`` entry.

    Returns:
        The cell's params.
    """
    _check_family(cell, tuple(_FLAX_GATES), "Flax")
    _check_mapping(params, "from_flax", "the cell's variables ({'params': {...}})")
    params = params.get("params", params)
    _check_mapping(params, "from_flax", "the cell's variables ({'params': {...}})")
    names = [("i" + g, "h" + g) for g in _FLAX_GATES[cell.name]]
    if cell.name == "simple_rnn":
        names = [("i", "h")]
    missing = [n for pair in names for n in pair if n not in params]
    if missing:
        found = [family for family in _FLAX_GATES if set(_flax_keys(family)) <= set(params)]
        if found:
            raise ValueError(
                f"flax params hold a {_FLAX_CELLS[found[-1]]} (keys {sorted(params)}) but the "
                f"cell is {cell.name}; build rj.{found[-1]}(...) or convert the right module"
            )
        raise ValueError(f"flax params lack {missing}; found {sorted(params)}")
    for _, h in names:
        kernel = np.shape(params[h].get("kernel", ()))
        if len(kernel) != 2 or kernel[0] != kernel[1]:
            raise ValueError(f"flax params have {h}/kernel {kernel}; expected a square (H, H)")
        _check_source(cell, _gates(cell), kernel[0], f"{h}/kernel {kernel}")

    def bias(name: str, size: int) -> np.ndarray:
        b = params[name].get("bias")
        return np.zeros((size,), np.float32) if b is None else _array(b)

    H = cell.hidden_size
    U = np.concatenate([_array(params[i]["kernel"]) for i, _ in names], axis=-1)  # (D, G)
    W = np.concatenate([_array(params[h]["kernel"]) for _, h in names], axis=-1)  # (H, G)
    b_in = np.concatenate([bias(i, H) for i, _ in names])  # (G,)
    b_hid = [bias(h, H) for _, h in names]
    if cell.name == "gru":
        b = b_in + np.concatenate([b_hid[0], b_hid[1], np.zeros((H,), np.float32)])
        return _assemble(cell, U, W, b, b_hn=b_hid[2])
    return _assemble(cell, U, W, b_in + np.concatenate(b_hid))


__all__ = ["from_flax", "from_torch"]


def from_torch_module_state(layer: Any, state_dict: Mapping[str, Any]) -> tuple:
    """Loads a whole PyTorch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` state dict into `rnnjax.rnn`.

    Every layer and direction in one call (``proj_size`` included: ``weight_hr_l{k}`` (P, H)
    becomes ``W_hr`` (H, P)); the layer must have the module's mode, sizes, number of layers
    and directions.

    Args:
        layer: an `rnnjax.rnn_layer.RNNLayer`, e.g. ``rj.rnn("lstm", 64, num_layers=2,
            bidirectional=True)`` for ``nn.LSTM(D, 64, num_layers=2, bidirectional=True)``.
        state_dict: the module's ``state_dict()`` (tensors or arrays).

    Returns:
        The layer's params: a tuple over layers of cell params, or of
        `rnnjax.layers.BidirectionalParams` when bidirectional.

    Example:
        >>> layer = rj.rnn("gru", 32, num_layers=3)
        >>> params = from_torch_module_state(layer, torch_gru.state_dict())
    """
    from rnnjax.cells.lstmp import LSTMPParams
    from rnnjax.layers import BidirectionalParams
    from rnnjax.rnn_layer import base_cell

    cell = base_cell(layer)
    L, dirs = layer.num_layers, (False, True) if layer.bidirectional else (False,)
    if f"weight_ih_l{L}" in state_dict:
        raise ValueError(f"state_dict has more than the layer's num_layers={L} layers")
    if not layer.bidirectional and "weight_ih_l0_reverse" in state_dict:
        raise ValueError("state_dict is of a bidirectional module; use bidirectional=True")
    if (layer.proj_size > 0) != ("weight_hr_l0" in state_dict):
        raise ValueError(
            f"the layer has proj_size={layer.proj_size} but the state_dict "
            f"{'has' if 'weight_hr_l0' in state_dict else 'has no'} weight_hr_l0"
        )

    def one(depth: int, reverse: bool) -> Any:
        if not layer.proj_size:
            return from_torch(cell, state_dict, layer=depth, reverse=reverse)
        sfx = f"_l{depth}" + ("_reverse" if reverse else "")
        for name in ("weight_ih", "weight_hh", "weight_hr"):
            if name + sfx not in state_dict:
                raise ValueError(f"state_dict has no {name + sfx!r}; keys: {sorted(state_dict)}")
        w_ih, w_hh = _array(state_dict["weight_ih" + sfx]), _array(state_dict["weight_hh" + sfx])
        w_hr = _array(state_dict["weight_hr" + sfx])  # (P, H)
        zeros = np.zeros((w_ih.shape[0],), np.float32)
        b = _array(state_dict.get("bias_ih" + sfx, zeros))
        b = b + _array(state_dict.get("bias_hh" + sfx, zeros))  # (4H,)
        H, P = layer.cell_hidden, layer.proj_size
        if w_hh.shape != (4 * H, P) or w_hr.shape != (P, H):
            raise ValueError(
                f"weights do not fit an LSTMP with hidden_size={H}, proj_size={P}: got "
                f"weight_hh {w_hh.shape}, weight_hr {w_hr.shape}"
            )
        arrays = (w_ih.T, w_hh.T, b, w_hr.T)  # (D, 4H), (P, 4H), (4H,), (H, P)
        return LSTMPParams(*(jnp.asarray(a) for a in arrays))

    params = []
    for depth in range(L):
        pair = [one(depth, r) for r in dirs]
        params.append(BidirectionalParams(*pair) if layer.bidirectional else pair[0])
    return tuple(params)


__all__ += ["from_torch_module_state"]
