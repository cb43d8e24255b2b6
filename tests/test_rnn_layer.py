"""`rj.rnn`, the PyTorch-shaped layer: whole multi-layer, bidirectional nn.LSTM / nn.GRU / nn.RNN
(and LSTMP, proj_size) state dicts loaded in one call, with outputs, final states and input
gradients equal to PyTorch's on ragged batches (pack_padded_sequence); stacks of bidirectional
layers and bidirectional stacks; resets in a bidirectional layer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax.interop import from_torch_module_state
from rnnjax.rnn_layer import carry_from_torch, torch_state

torch = pytest.importorskip("torch")

B, T, D, H, P = 3, 6, 4, 5, 3
LENGTHS = np.array([T, 2, 4])

MODULES = {
    "lstm_2x_bi": (lambda: torch.nn.LSTM(D, H, 2, batch_first=True, bidirectional=True), {}),
    "gru_2x_bi": (lambda: torch.nn.GRU(D, H, 2, batch_first=True, bidirectional=True), {}),
    "lstmp_2x_bi": (
        lambda: torch.nn.LSTM(D, H, 2, batch_first=True, bidirectional=True, proj_size=P),
        {"proj_size": P},
    ),
    "rnn_relu_3x": (lambda: torch.nn.RNN(D, H, 3, nonlinearity="relu", batch_first=True), {}),
}


def _layer_for(module, options):
    mode = {"LSTM": "lstm", "GRU": "gru"}.get(type(module).__name__)
    mode = mode or f"rnn_{module.nonlinearity}"
    return rj.rnn(mode, H, module.num_layers, bidirectional=module.bidirectional, **options)


@pytest.mark.parametrize("name", MODULES)
def test_whole_torch_modules_outputs_final_states_and_input_gradients(name):
    make_module, options = MODULES[name]
    torch.manual_seed(0)
    module = make_module()
    with torch.no_grad():  # fresh, non-default values everywhere (biases included)
        for p in module.parameters():
            p.normal_(0.0, 0.4)
    layer = _layer_for(module, options)
    params = from_torch_module_state(layer, module.state_dict())

    dirs = 2 if module.bidirectional else 1
    rng = np.random.default_rng(0)
    xs_np = rng.normal(size=(B, T, D)).astype(np.float32)
    h_size = options.get("proj_size", 0) or H
    h0_np = rng.normal(size=(module.num_layers * dirs, B, h_size)).astype(np.float32)
    c0_np = rng.normal(size=(module.num_layers * dirs, B, H)).astype(np.float32)
    is_lstm = isinstance(module, torch.nn.LSTM)

    # PyTorch: packed ragged batch
    x_t = torch.tensor(xs_np, requires_grad=True)
    h0_t = torch.tensor(h0_np, requires_grad=True)
    c0_t = torch.tensor(c0_np, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x_t, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False
    )
    out, state = module(packed, (h0_t, c0_t) if is_lstm else h0_t)
    y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    h_n = state[0] if is_lstm else state
    loss = y_t.sin().sum() + (h_n**2).sum() + ((state[1] ** 3).sum() if is_lstm else 0)
    loss.backward()

    def forward(x, h0, c0):
        carry = carry_from_torch(layer, h0, c0 if is_lstm else None)
        final, ys = layer.apply(params, x, carry, lengths=jnp.asarray(LENGTHS))
        return ys, torch_state(layer, final)

    def our_loss(x, h0, c0):
        ys, (h_n, c_n) = forward(x, h0, c0)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n**2) + (jnp.sum(c_n**3) if is_lstm else 0.0)

    xs, h0, c0 = jnp.asarray(xs_np), jnp.asarray(h0_np), jnp.asarray(c0_np)
    ys, (h_n_ours, c_n_ours) = jax.jit(forward)(xs, h0, c0)
    tol = dict(rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(ys, y_t.detach().numpy(), **tol)
    chex.assert_trees_all_close(h_n_ours, h_n.detach().numpy(), **tol)
    if is_lstm:
        chex.assert_trees_all_close(c_n_ours, state[1].detach().numpy(), **tol)
    grads = jax.jit(jax.grad(our_loss, argnums=(0, 1, 2)))(xs, h0, c0)
    wants = [x_t.grad.numpy(), h0_t.grad.numpy()] + ([c0_t.grad.numpy()] if is_lstm else [])
    for got, want in zip(grads, wants, strict=False):  # float32 sums: relative to the largest
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert ys.shape == (B, T, layer.hidden_size)


def test_from_torch_module_state_refuses_a_mismatched_layer():
    state = torch.nn.LSTM(D, H, 2, bidirectional=True).state_dict()
    with pytest.raises(ValueError, match="bidirectional"):
        from_torch_module_state(rj.rnn("lstm", H, 2), state)
    with pytest.raises(ValueError, match="num_layers=1"):
        from_torch_module_state(rj.rnn("lstm", H, 1, bidirectional=True), state)
    with pytest.raises(ValueError, match="weight_hr"):
        from_torch_module_state(rj.rnn("lstm", H, 2, bidirectional=True, proj_size=2), state)
    with pytest.raises(ValueError, match="proj_size"):
        rj.rnn("gru", H, proj_size=2)
    with pytest.raises(ValueError, match="mode"):
        rj.rnn("transformer", H)


def test_a_stack_of_bidirectional_layers_and_a_bidirectional_stack():
    xs = jax.random.normal(jax.random.key(0), (B, T, D))
    lengths = jnp.asarray(LENGTHS)
    stack = rj.stacked([rj.bidirectional(rj.lstm(H))] * 2)
    params = stack.init(jax.random.key(1), D)
    finals, ys = stack.apply(params, xs, lengths=lengths)
    bi = rj.bidirectional(rj.lstm(H))
    f1, y1 = bi.apply(params[0], xs, lengths=lengths)
    f2, y2 = bi.apply(params[1], y1, lengths=lengths)
    chex.assert_trees_all_close((finals, ys), ((f1, f2), y2), rtol=1e-6, atol=1e-6)
    assert stack.hidden_size == 2 * H
    with pytest.raises(ValueError, match="whole sequence"):
        stack.step(params, stack.initial_carry(params, (B,)), xs[:, 0])

    deep = rj.stacked([rj.gru(H), rj.gru(H)])
    bi_deep = rj.bidirectional(deep)
    p = bi_deep.init(jax.random.key(2), D)
    _, ys = bi_deep.apply(p, xs, lengths=lengths)
    _, fw = deep.apply(p.forward, xs, lengths=lengths)
    rev = rj.reverse_within_lengths(jnp.swapaxes(xs, 0, 1), lengths)
    _, bw = deep.apply(p.backward, rev, lengths=lengths, time_major=True)
    bw = jnp.swapaxes(rj.reverse_within_lengths(bw, lengths), 0, 1)
    chex.assert_trees_all_close(ys, jnp.concatenate([fw, bw], -1), rtol=1e-5, atol=1e-6)


def test_bidirectional_resets_separate_packed_segments_in_both_directions():
    bi = rj.bidirectional(rj.gru(H))
    params = bi.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (2, T, D))
    starts = np.zeros((2, T), bool)
    starts[0, [0, 2]] = True  # row 0: segments [0, 2) and [2, 6)
    _, ys = bi.apply(params, xs, resets=jnp.asarray(starts), backend="fused")
    _, a = bi.apply(params, xs[0, :2])
    _, b = bi.apply(params, xs[0, 2:])
    chex.assert_trees_all_close(ys[0], jnp.concatenate([a, b]), rtol=1e-5, atol=1e-6)
    _, whole = bi.apply(params, xs[1])
    chex.assert_trees_all_close(ys[1], whole, rtol=1e-5, atol=1e-6)


def test_dropout_and_regularisation_need_a_key():
    layer = rj.rnn("lstm", H, 2, bidirectional=True, dropout=0.5, zoneout_c=0.5, weight_drop=0.3)
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    _, ev = layer.apply(params, xs)
    _, ev_again = layer.apply(params, xs, backend="scan")
    chex.assert_trees_all_close(ev, ev_again, rtol=1e-5, atol=1e-6)  # no key: deterministic
    _, tr = layer.apply(params, xs, key=jax.random.key(2), backend="fused")
    _, tr_scan = layer.apply(params, xs, key=jax.random.key(2), backend="scan")
    chex.assert_trees_all_close(tr, tr_scan, rtol=1e-5, atol=1e-6)  # same key, same masks
    assert not jnp.allclose(tr, ev)
