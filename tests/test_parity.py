"""Parity with implementations rnnjax did not write: flax linen cells, jax.experimental.rnn's
`lstm_ref` (PyTorch layout) and PyTorch itself, forward and gradients, float32 <= 1e-5."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn as jax_rnn

import rnnjax as rj
from rnnjax.interop import from_flax, from_torch

try:
    import torch
except ImportError:  # only the PyTorch tests need it: the flax and lstm_ref oracles still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

B, T, D, H = 3, 7, 5, 6
TOL = dict(rtol=1e-5, atol=1e-6)

FLAX_CELLS = {
    "SimpleCell": (nn.SimpleCell, lambda: rj.simple_rnn(H)),
    "LSTMCell": (nn.LSTMCell, lambda: rj.lstm(H)),
    "OptimizedLSTMCell": (nn.OptimizedLSTMCell, lambda: rj.lstm(H)),
    "GRUCell": (nn.GRUCell, lambda: rj.gru(H)),
}


def _flax_carry_to_rnnjax(name, carry):
    if "LSTM" in name:
        c, h = carry  # flax orders the LSTM carry (c, h)
        return rj.LSTMCarry(h=h, c=c)
    return rj.RNNCarry(carry)


@pytest.mark.parametrize("name", FLAX_CELLS)
def test_flax_linen_cells_forward_and_gradients(name, rng):
    flax_cls, make_cell = FLAX_CELLS[name]
    k_init, k_bias, k_x, k_c = jax.random.split(rng, 4)
    layer = nn.RNN(flax_cls(features=H), return_carry=True)
    xs = jax.random.normal(k_x, (B, T, D))
    variables = layer.init(k_init, xs)
    # biases start at zero in flax: give them fresh values so the bias mapping is tested
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(k_bias, len(leaves))
    variables = treedef.unflatten(
        [x + 0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    cell = make_cell()
    params = from_flax(cell, variables["params"]["cell"])

    flax_carry = flax_cls(features=H).initialize_carry(k_c, (B, D))
    flax_carry = jax.tree.map(lambda a: jax.random.normal(k_c, a.shape), flax_carry)
    carry = _flax_carry_to_rnnjax(name, flax_carry)

    def flax_loss(x, c):
        final, ys = layer.apply(variables, x, initial_carry=c)
        first = final[0] if "LSTM" in name else final  # (c, h) for LSTMs, else h
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(first)), (final, ys)

    def our_loss(x, c):
        final, ys = rj.unroll(cell, params, x, c, backend="scan")  # the reference
        first = final.c if "LSTM" in name else final.h  # flax's first carry element
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(first)), (final, ys)

    (l_f, (final_f, ys_f)), g_f = jax.jit(jax.value_and_grad(flax_loss, (0, 1), has_aux=True))(
        xs, flax_carry
    )
    (l_r, (final_r, ys_r)), g_r = jax.jit(jax.value_and_grad(our_loss, (0, 1), has_aux=True))(
        xs, carry
    )
    chex.assert_trees_all_close(ys_r, ys_f, **TOL)
    chex.assert_trees_all_close(final_r, _flax_carry_to_rnnjax(name, final_f), **TOL)
    chex.assert_trees_all_close(l_r, l_f, **TOL)
    chex.assert_trees_all_close(g_r[0], g_f[0], **TOL)  # d/dxs
    chex.assert_trees_all_close(g_r[1], _flax_carry_to_rnnjax(name, g_f[1]), **TOL)  # d/dc0


@pytest.mark.parametrize("name", FLAX_CELLS)
def test_flax_parameter_gradients(name, rng):
    """dL/dU and dL/dW equal flax's per-gate kernel gradients, concatenated by from_flax;
    the hidden-side bias gradient equals the matching slice of dL/db."""
    flax_cls, make_cell = FLAX_CELLS[name]
    k_init, k_x = jax.random.split(rng)
    layer = nn.RNN(flax_cls(features=H))
    xs = jax.random.normal(k_x, (B, T, D))
    variables = layer.init(k_init, xs)
    cell = make_cell()
    params = from_flax(cell, variables["params"]["cell"])

    g_flax = jax.grad(lambda v: jnp.sum(jnp.tanh(layer.apply(v, xs))))(variables)
    g_ours = jax.grad(lambda p: jnp.sum(jnp.tanh(rj.unroll(cell, p, xs)[1])))(params)
    g_flax = g_flax["params"]["cell"]
    kernels_as_params = from_flax(
        cell, {k: {"kernel": v["kernel"]} for k, v in g_flax.items()}
    )  # biases dropped: only the kernels are moved
    chex.assert_trees_all_close(g_ours.U, kernels_as_params.U, **TOL)
    chex.assert_trees_all_close(g_ours.W, kernels_as_params.W, **TOL)
    if name == "GRUCell":
        chex.assert_trees_all_close(g_ours.b_hn, g_flax["hn"]["bias"], **TOL)
        chex.assert_trees_all_close(g_ours.b[:H], g_flax["ir"]["bias"], **TOL)
    elif name == "SimpleCell":
        chex.assert_trees_all_close(g_ours.b, g_flax["i"]["bias"], **TOL)
    else:
        chex.assert_trees_all_close(g_ours.b[H : 2 * H], g_flax["hf"]["bias"], **TOL)


def _torch_layout_lstm(key, layers=1, bidirectional=False):
    """A PyTorch-layout state dict of random arrays, and the same in lstm_ref's dicts."""
    state, W_ih, W_hh, b_ih, b_hh = {}, {}, {}, {}, {}
    directions = ["", "_reverse"] if bidirectional else [""]
    index = 0
    for layer in range(layers):
        for suffix in directions:
            size_in = D if layer == 0 else H * len(directions)
            keys = jax.random.split(jax.random.fold_in(key, index), 4)
            shapes = [(4 * H, size_in), (4 * H, H), (4 * H,), (4 * H,)]
            arrays = [0.4 * jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]
            for prefix, arr in zip(
                ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), arrays, strict=True
            ):
                state[f"{prefix}_l{layer}{suffix}"] = np.asarray(arr)
            W_ih[index], W_hh[index], b_ih[index], b_hh[index] = arrays
            index += 1
    return state, (W_ih, W_hh, b_ih, b_hh)


def test_lstm_ref_forward_gradients_and_ragged_lengths(rng):
    k_w, k_x, k_h = jax.random.split(rng, 3)
    state, (W_ih, W_hh, b_ih, b_hh) = _torch_layout_lstm(k_w)
    cell = rj.lstm(H)
    params = from_torch(cell, state)
    xs = jax.random.normal(k_x, (B, T, D))
    h0, c0 = jax.random.normal(k_h, (2, 1, B, H))
    lengths = jnp.array([T, 1, 4], jnp.int32)

    def ref_loss(x, h, c):
        ys, h_n, c_n = jax_rnn.lstm_ref(
            x, h, c, W_ih, W_hh, b_ih, b_hh, lengths, D, H, 1, 0.0, False
        )
        valid = jnp.arange(T)[None, :] < lengths[:, None]  # (B, T)
        ys = jnp.where(valid[..., None], ys, 0.0)  # lstm_ref runs through the padding
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n * c_n), (ys, h_n[0], c_n[0])

    def our_loss(x, h, c):
        final, ys = rj.unroll(cell, params, x, rj.LSTMCarry(h[0], c[0]), lengths=lengths)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final.h * final.c), (ys, final.h, final.c)

    (l_ref, out_ref), g_ref = jax.value_and_grad(ref_loss, (0, 1, 2), has_aux=True)(xs, h0, c0)
    (l_our, out_our), g_our = jax.value_and_grad(our_loss, (0, 1, 2), has_aux=True)(xs, h0, c0)
    chex.assert_trees_all_close(out_our, out_ref, **TOL)
    chex.assert_trees_all_close(l_our, l_ref, **TOL)
    chex.assert_trees_all_close(g_our, g_ref, **TOL)


def test_lstm_ref_bidirectional_with_lengths(rng):
    k_w, k_x = jax.random.split(rng)
    state, (W_ih, W_hh, b_ih, b_hh) = _torch_layout_lstm(k_w, bidirectional=True)
    cell = rj.lstm(H)
    bi = rj.bidirectional(cell)
    params = rj.layers.BidirectionalParams(
        from_torch(cell, state), from_torch(cell, state, reverse=True)
    )
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jnp.array([3, T, 1], jnp.int32)
    zeros = jnp.zeros((2, B, H))
    ys_ref, h_n, c_n = jax_rnn.lstm_ref(
        xs, zeros, zeros, W_ih, W_hh, b_ih, b_hh, lengths, D, H, 1, 0.0, True
    )
    (fw, bw), ys = bi.apply(params, xs, lengths=lengths)
    valid = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
    chex.assert_trees_all_close(ys, jnp.where(valid, ys_ref, 0.0), **TOL)
    chex.assert_trees_all_close((fw.h, bw.h, fw.c, bw.c), (*h_n, *c_n), **TOL)


TORCH_MODULES = {
    "RNN_tanh": (lambda: torch.nn.RNN(D, H, 2, batch_first=True), lambda: rj.simple_rnn(H)),
    "RNN_relu": (
        lambda: torch.nn.RNN(D, H, 1, nonlinearity="relu", batch_first=True),
        lambda: rj.simple_rnn(H, activation="relu"),
    ),
    "LSTM": (lambda: torch.nn.LSTM(D, H, 2, batch_first=True), lambda: rj.lstm(H)),
    "GRU": (lambda: torch.nn.GRU(D, H, 2, batch_first=True), lambda: rj.gru(H)),
    "GRU_bidirectional": (
        lambda: torch.nn.GRU(D, H, 1, batch_first=True, bidirectional=True),
        lambda: rj.gru(H),
    ),
}


@needs_torch
@pytest.mark.parametrize("name", TORCH_MODULES)
def test_pytorch_modules_forward_and_input_gradients(name, rng):
    make_module, make_cell = TORCH_MODULES[name]
    torch.manual_seed(int(jax.random.randint(rng, (), 0, 2**31 - 1)))
    module = make_module()
    with torch.no_grad():  # fresh, non-default values everywhere (biases included)
        for p in module.parameters():
            p.normal_(0.0, 0.4)
    xs_np = np.asarray(jax.random.normal(rng, (B, T, D)))
    x_t = torch.tensor(xs_np, requires_grad=True)
    y_t, _ = module(x_t)
    y_t.sin().sum().backward()

    cell = make_cell()
    state = module.state_dict()
    if module.bidirectional:
        bi = rj.bidirectional(cell)
        params = rj.layers.BidirectionalParams(
            from_torch(cell, state), from_torch(cell, state, reverse=True)
        )

        def forward(x):
            return bi.apply(params, x)[1]
    else:
        stack = rj.stacked([cell] * module.num_layers)
        params = tuple(from_torch(cell, state, layer=i) for i in range(module.num_layers))

        def forward(x):
            return stack.apply(params, x)[1]

    xs = jnp.asarray(xs_np)
    ys, vjp = jax.vjp(forward, xs)
    (dxs,) = vjp(jnp.cos(ys))
    chex.assert_trees_all_close(ys, y_t.detach().numpy(), **TOL)
    # float32 sums of many terms: the error scales with the largest entry, not each entry
    want = x_t.grad.numpy()
    chex.assert_trees_all_close(dxs, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_from_torch_rejects_what_it_cannot_convert():
    state = {"weight_ih_l0": np.zeros((4 * H, D)), "weight_hh_l0": np.zeros((4 * H, H))}
    with pytest.raises(ValueError, match="peephole"):
        from_torch(rj.lstm(H, peephole=True), state)
    with pytest.raises(ValueError, match="weight_ih_l1"):
        from_torch(rj.lstm(H), state, layer=1)
    with pytest.raises(ValueError, match="hidden_size=7"):
        from_torch(rj.lstm(7), state)
    with pytest.raises(ValueError, match="reset_after"):
        from_torch(rj.gru(H, reset_after=False), state)
    with pytest.raises(ValueError, match="multiplicative_rnn"):
        from_flax(rj.multiplicative_rnn(H, 3), {})


def _char_lm_pair(text, frozen_b_hh=False, **recipe):
    """The PyTorch model of ``benchmarks/char_lm_pytorch.py`` and rnnjax's `setup` of the same
    recipe, with rnnjax's params holding the PyTorch weights."""
    import sys
    from pathlib import Path

    from rnnjax.layers import EmbeddingParams, ReadoutParams
    from rnnjax.train import RunConfig, setup
    from rnnjax.train.model import ModelParams

    bench = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, bench)
    try:
        import char_lm_pytorch
    finally:
        sys.path.remove(bench)
    config = RunConfig(
        corpus="default",
        cell="lstm",
        hidden=recipe["hidden"],
        layers=recipe["layers"],
        embed=recipe["embed"],
        window=recipe["window"],
        batch_size=recipe["batch"],
        optimizer="adam",
        lr=recipe["lr"],
        clip=recipe["clip"],
    )
    s = setup(config, text=text)
    torch.manual_seed(0)
    torch_model = char_lm_pytorch.make_model(s.text.vocab.size, recipe)
    if frozen_b_hh:  # one bias per gate, as rnnjax has (Adam would move b_ih + b_hh twice as far)
        for name, value in torch_model.rnn.named_parameters():
            if name.startswith("bias_hh"):
                value.requires_grad_(False).zero_()
    weights = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
    params = ModelParams(
        embed=EmbeddingParams(weights["embed.weight"]),  # (V, E)
        rnn=tuple(
            from_torch(cell, {k[4:]: v for k, v in weights.items() if k.startswith("rnn.")}, i)
            for i, cell in enumerate(s.model.stack.cells)
        ),
        out=ReadoutParams(weights["out.weight"].T, weights["out.bias"]),  # (H, V), (V,)
    )
    return char_lm_pytorch, torch_model, s, params


CHAR_LM = dict(embed=8, hidden=16, layers=2, window=10, batch=4, lr=1e-2, clip=0.1)


@needs_torch
def test_pytorch_char_lm_scores_validation_as_rnnjax_train():
    """The PyTorch side of ``benchmarks/char_lm.py --versus-pytorch`` measures validation the way
    ``rnnjax train`` does: with rnnjax holding the PyTorch model's weights, the two evaluations
    of the same validation streams give the same bits per character."""
    from rnnjax.data import default_corpus

    bench, torch_model, s, params = _char_lm_pair(default_corpus()[:6000], **CHAR_LM)
    expected = s.evaluate(params)["bpc"]
    got = bench.validation_bpc(torch_model, s.text.val, CHAR_LM["window"])
    assert 3.0 < expected < 8.0  # an untrained model: about log2(V) bits
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@needs_torch
def test_pytorch_char_lm_trains_as_rnnjax_train():
    """... and trains the way it does: from the same weights, the same windows in the same
    order (3 per epoch here, so 7 updates cross two epoch boundaries where the carry resets),
    the carry handed between windows, clipping (at 0.1 it fires) and Adam give the same loss
    at every update. PyTorch's second bias vector b_hh is frozen at zero here: trained, it gets
    the same gradient as b_ih, so Adam moves their sum twice as far per update as rnnjax's
    single b — a difference of parametrisation the benchmark keeps, not of the loop."""
    from rnnjax.data import default_corpus
    from rnnjax.train import init_state, make_train_step

    bench, torch_model, s, params = _char_lm_pair(
        default_corpus()[:160], **CHAR_LM, frozen_b_hh=True
    )
    assert (s.data.shape[1] - 1) // CHAR_LM["window"] == 3  # windows per epoch
    torch_step = bench.make_trainer(torch_model, s.data, CHAR_LM)
    step = jax.jit(make_train_step(s.objective, s.optimizer))
    state = init_state(params, s.optimizer, s.objective.initial_carry(params))
    data = jnp.asarray(s.data)
    ours, theirs, clipped = [], [], []
    for _ in range(7):
        state, metrics = step(state, data)
        ours.append(float(metrics["loss"]))
        clipped.append(float(metrics["clipped"]))
        theirs.append(float(torch_step()))
    assert sum(clipped) >= 1  # clipping took part
    assert ours[-1] < ours[0]  # and the models learn
    np.testing.assert_allclose(theirs, ours, rtol=1e-4)
