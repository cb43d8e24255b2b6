"""The portable fast backends ("fused", "auto") equal backend="scan": outputs, final carry and
gradients with respect to params, inputs and initial carry, with lengths, reverse and
bidirectional layers; and the fused backward has the structure it promises."""

import os
import shutil
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import pytest
from conftest import CELL_FACTORIES, assert_close, random_like

import rnnjax as rj
from rnnjax.kernels import BACKENDS, choose_backend, fused, fused_cpu
from rnnjax.kernels.auto import TABLE

B, T, D, H = 3, 7, 4, 5
# the cells in the structured form: every derived backend runs them
FUSED_CELLS = [name for name, make in CELL_FACTORIES.items() if make(H).structure is not None]


def test_the_structured_cells_are_the_expected_ones():
    assert set(CELL_FACTORIES) - set(FUSED_CELLS) == {"multiplicative_rnn", "gru_cho"}


def make(name, key, dtype=None):
    factory = CELL_FACTORIES[name]
    cell = factory(H) if dtype is None else _with_dtype(name, dtype)
    k_p, k_r = jax.random.split(key)
    return cell, random_like(k_r, cell.init(k_p, D))  # fresh values in every leaf


def _with_dtype(name, dtype):
    return {"lstm": rj.lstm, "gru": rj.gru, "simple_rnn": rj.simple_rnn}[name](H, dtype=dtype)


def value_and_vjp(cell, backends, params, xs, carry, cotangents, **options):
    """For each backend: (final_carry, ys) and the gradients of <cotangents, (final_carry, ys)>
    with respect to (params, xs, carry), all in one jit (one compilation)."""

    def one(backend, p, x, c, ct):
        run = lambda p, x, c: rj.unroll(cell, p, x, c, backend=backend, **options)  # noqa: E731
        out, vjp = jax.vjp(run, p, x, c)
        return out, vjp(ct)

    go = jax.jit(lambda *args: [one(b, *args) for b in backends])
    return go(params, xs, carry, cotangents)


def random_problem(cell, params, key, batch=(B,), lengths=False):
    k_x, k_c, k_g, k_l = jax.random.split(key, 4)
    xs = jax.random.normal(k_x, (*batch, T, D))
    carry = random_like(k_c, cell.initial_carry(params, batch))
    out_shape = jax.eval_shape(lambda: rj.unroll(cell, params, xs, carry))
    cotangents = random_like(k_g, out_shape, scale=1.0)
    opts = {}
    if lengths:
        lens = jax.random.randint(k_l, batch, 0, T + 1).at[0].set(T).at[-1].set(0)
        opts["lengths"] = lens
    return xs, carry, cotangents, opts


def check_backend(name, backend, key, dtype=None, rtol=1e-5, **options):
    cell, params = make(name, key, dtype)
    xs, carry, ct, opts = random_problem(cell, params, key, lengths=options.pop("lengths", False))
    want, got = value_and_vjp(cell, ("scan", backend), params, xs, carry, ct, **opts, **options)
    assert_close(got, want, rtol)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_equals_scan(name, rng):
    check_backend(name, "fused", rng)


@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_equals_scan_with_lengths_and_reverse(name, rng):
    check_backend(name, "fused", rng, lengths=True, reverse=True)


def test_fused_with_lengths_forward_and_unroll(rng):
    check_backend("lstm_peephole", "fused", rng, lengths=True, unroll=3)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_bfloat16_compute(name, rng):
    check_backend(name, "fused", rng, dtype=jnp.bfloat16, rtol=1e-2, lengths=True)


@pytest.mark.parametrize("layout", ["unbatched", "time_major"])
def test_fused_layouts(layout, rng):
    cell, params = make("lstm_peephole", rng)
    k_x, k_g = jax.random.split(rng)
    shape = (T, D) if layout == "unbatched" else (T, B, D)
    xs = jax.random.normal(k_x, shape)
    carry = cell.initial_carry(params, () if layout == "unbatched" else (B,))
    opts = {"time_major": layout == "time_major"}
    ct = random_like(k_g, jax.eval_shape(lambda: rj.unroll(cell, params, xs, carry, **opts)))
    want, got = value_and_vjp(cell, ("scan", "fused"), params, xs, carry, ct, **opts)
    assert_close(got, want, 1e-5)


@pytest.mark.parametrize("backend", ["fused", "auto"])
def test_bidirectional_layer(backend, rng):
    layer = rj.bidirectional(rj.lstm(H))
    k_p, k_x, k_l, k_g = jax.random.split(rng, 4)
    params = random_like(k_p, layer.init(k_p, D))
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jax.random.randint(k_l, (B,), 1, T + 1).at[0].set(T)
    w = jax.random.normal(k_g, (B, T, 2 * H))

    def loss(p, x, backend):
        (f, b), ys = layer.apply(p, x, lengths=lengths, backend=backend)
        return jnp.sum(ys * w) + jnp.sum(f.c * b.h)

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    both = jax.jit(lambda p, x: (grad(p, x, backend), grad(p, x, "scan")))
    assert_close(*both(params, xs), 1e-5)


@pytest.mark.parametrize("name", ["gru", "lstm_peephole"])
def test_auto_equals_scan(name, rng):
    cell, _ = make(name, rng)
    assert choose_backend(cell, B, T)[0] != "scan"  # auto runs a fast backend here
    check_backend(name, "auto", rng, lengths=True)


needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="fused_cpu builds with g++")


@needs_gxx
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_cpu_equals_scan(name, rng):
    check_backend(name, "fused_cpu", rng, lengths=True, reverse=True)


@needs_gxx
@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(("batch", "hidden"), [(3, 40), (13, 33)])
def test_fused_cpu_team_equals_scan(name, threads, batch, hidden, rng, monkeypatch):
    """The C++ loop split over a team of threads (each owning a range of hidden units, whole
    registers where H allows, a ragged last range where not): outputs, carry and every gradient
    equal scan's, with lengths (one sequence empty) and reversed; the LSTM's inference takes
    the C++ forward too."""
    monkeypatch.setenv("RNNJAX_CPU_THREADS", str(threads))
    assert fused_cpu.team_size(batch, hidden) == threads
    cell = CELL_FACTORIES[name](hidden)
    k_p, k_r = jax.random.split(rng)
    params = random_like(k_r, cell.init(k_p, D))
    xs, carry, ct, opts = random_problem(cell, params, rng, batch=(batch,), lengths=True)
    backends = ("scan", "fused_cpu")
    want, got = value_and_vjp(cell, backends, params, xs, carry, ct, **opts, reverse=True)
    assert_close(got, want, 1e-5)
    run = jax.jit(lambda b: rj.unroll(cell, params, xs, carry, backend=b, **opts), static_argnums=0)
    assert_close(run("fused_cpu"), run("scan"), 1e-5)


def _thread_affinities() -> set[str]:
    """The CPUs each thread of this process may run on ("0-1", ...), as Linux lists them."""
    lists = set()
    for status in Path("/proc/self/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split()[1])
    return lists


@needs_gxx
@pytest.mark.skipif(
    not Path("/proc/self/task").exists() or len(os.sched_getaffinity(0)) < 2,
    reason="thread placement: Linux with at least two CPUs",
)
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_cpu_team_leaves_thread_affinity_as_it_was(name, rng, monkeypatch):
    """A team pins each of its threads to its own CPU while it runs — the caller included, an
    XLA worker thread — and gives the caller its own set back: afterwards no thread of the
    process is left on one CPU, forward and backward calls alike."""
    monkeypatch.setenv("RNNJAX_CPU_THREADS", "2")
    cell = CELL_FACTORIES[name](40)  # three registers of units: a team of two
    params = cell.init(rng, D)
    xs, carry, ct, opts = random_problem(cell, params, rng, batch=(3,))
    before = _thread_affinities()
    jax.block_until_ready(value_and_vjp(cell, ("fused_cpu",), params, xs, carry, ct, **opts))
    assert _thread_affinities() == before


def test_fused_cpu_team_size(monkeypatch):
    """One thread below MIN_WORK_FOR_A_TEAM multiply-adds per step with fewer than
    MIN_HIDDEN_FOR_A_TEAM units, every CPU otherwise; $RNNJAX_CPU_THREADS overrides."""
    monkeypatch.delenv("RNNJAX_CPU_THREADS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert fused_cpu.team_size(1, 96) == fused_cpu.team_size(4, 64) == 1
    assert fused_cpu.team_size(1, 128) == fused_cpu.team_size(32, 256) == cpus
    assert fused_cpu.team_size(128, 64) == cpus  # 2^19 multiply-adds per step
    monkeypatch.setenv("RNNJAX_CPU_THREADS", "3")
    assert fused_cpu.team_size(1, 96) == 3


@needs_gxx
def test_fused_cpu_without_lengths(rng):
    check_backend("lstm", "fused_cpu", rng)


@needs_gxx
@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("lengths", [False, True])
def test_fused_cpu_inference_equals_scan(name, lengths, rng):
    """Undifferentiated (the LSTM's loop is then the generic XLA one): outputs equal scan's."""
    cell, params = make(name, rng)
    xs, carry, _, opts = random_problem(cell, params, rng, lengths=lengths)
    run = jax.jit(lambda b, p, x, c: rj.unroll(cell, p, x, c, backend=b, **opts), static_argnums=0)
    assert_close(run("fused_cpu", params, xs, carry), run("scan", params, xs, carry), 1e-5)


@pytest.mark.parametrize("name", ["lstm_peephole", "lstm_coupled", "gru_cho", "simple_rnn"])
def test_fused_cpu_rejects_other_cells(name):
    cell = CELL_FACTORIES[name](H)
    with pytest.raises(ValueError, match="fused_cpu"):
        rj.unroll(cell, cell.init(jax.random.key(0), D), jnp.ones((B, T, D)), backend="fused_cpu")


@pytest.mark.parametrize("name", [*CELL_FACTORIES, "min_gru"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("platform", sorted(TABLE))
def test_auto_choice_is_a_backend_that_runs_the_cell(name, batch, platform):
    cell = rj.min_gru(H) if name == "min_gru" else CELL_FACTORIES[name](H)
    backend, unroll = choose_backend(cell, batch, T, platform)
    assert backend in BACKENDS and backend != "auto"
    assert isinstance(unroll, int) and unroll >= 1
    params = cell.init(jax.random.key(0), D)
    xs = jnp.ones((batch, T, D))
    jax.eval_shape(lambda: rj.unroll(cell, params, xs, backend=backend, unroll=unroll))
    if name == "min_gru":
        assert backend == "associative"
    elif name in ("multiplicative_rnn", "gru_cho"):
        assert backend == "scan"  # no structured form: scan is the only backend that runs it
    elif platform == "cpu" and name in ("lstm", "gru") and fused_cpu.library_path().exists():
        assert backend == "fused_cpu"  # the plain LSTM / GRU: the C++ loop at every batch
    elif platform == "cpu" and batch > 4:
        assert backend == "fused"
    if platform == "cpu" and batch == 1 and backend == "fused":  # the small-batch unroll:
        assert unroll == (1 if cell.structure.gates == 1 else 4)  # gated cells only


def test_fused_rejects_cells_without_structure_and_runs_any_activation(rng):
    cell = rj.multiplicative_rnn(H, factors=3)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="multiplicative_rnn"):
        rj.unroll(cell, params, jnp.ones((B, T, D)), backend="fused")
    cell = rj.simple_rnn(H, activation=jnp.sin)  # derived: no table of known activations
    params = random_like(rng, cell.init(jax.random.key(0), D))
    xs, carry, ct, _ = random_problem(cell, params, rng)
    want, got = value_and_vjp(cell, ("scan", "fused"), params, xs, carry, ct)
    assert_close(got, want, 1e-5)


def _scan_bodies(jaxpr):
    """The body jaxprs of every scan in ``jaxpr`` (recursively), in order."""
    found = []
    for eqn in jaxpr.eqns:
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            if eqn.primitive.name == "scan":
                found.append(sub)
            found.extend(_scan_bodies(sub))
    return found


def _dots(jaxpr):
    return [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_fused_backward_loop_has_one_matmul_and_dW_is_one_matmul_after_it(rng):
    cell, params = make("lstm", rng)
    xs = jax.random.normal(rng, (B, T, D))

    def loss(W, backend):
        p = params._replace(W=W)
        return jnp.sum(rj.unroll(cell, p, xs, backend=backend)[1])

    jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params.W, "fused").jaxpr
    bodies = _scan_bodies(jaxpr)
    assert [len(_dots(b)) for b in bodies] == [1, 1]  # forward: h W; backward: dg Wᵀ
    dw = [e for e in _dots(jaxpr) if e.outvars[0].aval.shape == params.W.shape]
    assert len(dw) == 1  # Σ_t h_{t-1}ᵀ dg_t as one dot over (T, B)
    (contract, _), _ = dw[0].params["dimension_numbers"]
    assert len(contract) == 2
    # the reference: the autodiff of scan accumulates dW inside the backward loop
    ref = _scan_bodies(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params.W, "scan").jaxpr)
    assert max(len(_dots(b)) for b in ref) == 2


def test_fused_saves_less_than_scan():
    cell = rj.lstm(32)
    params = cell.init(jax.random.key(0), 8)
    xs = jnp.ones((4, 200, 8))

    def temp_bytes(backend):
        step = jax.jit(jax.grad(lambda p: jnp.sum(rj.unroll(cell, p, xs, backend=backend)[1])))
        return step.lower(params).compile().memory_analysis().temp_size_in_bytes

    fused, scan = temp_bytes("fused"), temp_bytes("scan")
    # fused keeps gates (4H) + c_{t-1} (H) per step: its residuals are bounded by 5 H floats
    # per step and row plus the loop buffers; scan's autodiff keeps more.
    assert fused < scan, (fused, scan)


@pytest.mark.parametrize(
    "name, reads",
    [
        ("lstm", False),
        ("lstm_peephole", False),
        ("simple_rnn", False),
        ("gru", True),
        ("diagonal_linear_rnn", True),  # no recurrent matmul: h_t = a ⊙ h_{t-1} + b
    ],
)
def test_fused_keeps_the_outputs_only_where_pointwise_reads_h(name, reads):
    """The LSTM's and the Simple RNN's step read h_{t-1} only through h_{t-1} W, so their
    backward recomputes h instead of keeping the (T, N, H) outputs; the GRU's reads h."""
    cell = CELL_FACTORIES[name](6) if name in CELL_FACTORIES else getattr(rj, name)(6)
    params = cell.init(jax.random.key(0), 3)
    s = cell.structure
    carry = cell.initial_carry(params, (2,))
    leaves, treedef = jax.tree.flatten(carry)
    px = jnp.ones((4, 2, s.gates * 6))
    up = tuple(s.unit_params(params))
    W = s.recurrent_weights(params)
    assert fused.reads_h(s, treedef, up, tuple(leaves), px, W is not None) is reads
    _, residuals = fused._fused_fwd(s, treedef, 1, W, up, px, tuple(leaves), None)
    assert (residuals[3] is not None) is reads
