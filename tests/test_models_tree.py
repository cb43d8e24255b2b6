"""Tree-LSTMs: the paper's equations, batched levels = recursion, child order, bad trees, the
application (a few steps, and a seeded learning test on an order-dependent task)."""

from collections import Counter

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_like
from test_models_seq2seq import run_tiny

from rnnjax.models import tree_data as td
from rnnjax.models import treelstm as tl
from rnnjax.models.registry import run_application

APPLY = jax.jit(tl.apply, static_argnums=(0, 3, 4))  # (cell, params, batch, widths, every_node)
CELLS = {"child-sum": lambda: tl.child_sum(8, embed=4), "n-ary": lambda: tl.n_ary(8, 3, embed=4)}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def gates_of(U, b, H):
    """The input side of the four gates, as named in the params' docstrings: (i, o, u, f)."""
    return {g: (U[:, k * H : (k + 1) * H], b[k * H : (k + 1) * H]) for k, g in enumerate("iouf")}


def child_sum_oracle(p, tree):
    """Tai, Socher & Manning 2015, eq. 2–8 (row-vector form x U + h W), float64 recursion."""
    p = {k: np.asarray(v, np.float64) for k, v in p._asdict().items()}
    H = p["W_f"].shape[0]
    U = gates_of(p["U"], p["b"], H)
    W = {g: p["W"][:, k * H : (k + 1) * H] for k, g in enumerate("iou")}

    def node(t):
        token, kids = (str(t), []) if isinstance(t, int) else (t[0], [node(k) for k in t[1:]])
        x = p["E"][td.TOKEN_ID[token]]
        h_tilde = sum((h for h, _ in kids), np.zeros(H))  # eq. 2
        i = sigmoid(x @ U["i"][0] + h_tilde @ W["i"] + U["i"][1])  # eq. 3
        f = [sigmoid(x @ U["f"][0] + h_k @ p["W_f"] + U["f"][1]) for h_k, _ in kids]  # eq. 4
        o = sigmoid(x @ U["o"][0] + h_tilde @ W["o"] + U["o"][1])  # eq. 5
        u = np.tanh(x @ U["u"][0] + h_tilde @ W["u"] + U["u"][1])  # eq. 6
        c = i * u + sum(
            (f_k * c_k for f_k, (_, c_k) in zip(f, kids, strict=True)), np.zeros(H)
        )  # eq. 7
        return o * np.tanh(c), c  # eq. 8

    return log_softmax(node(tree)[0] @ p["V"] + p["c"])


def n_ary_oracle(p, tree, N):
    """Tai, Socher & Manning 2015, eq. 9–14: weights per child position ℓ (missing children
    are zero states), a forget gate per child k that sees every sibling ℓ."""
    p = {k: np.asarray(v, np.float64) for k, v in p._asdict().items()}
    H = p["V"].shape[0]
    U = gates_of(p["U"], p["b"], H)

    def W(gate, l, k=0):  # W_ℓ^(gate), or W_kℓ^(f): row block ℓ, column block of the gate
        col = {"i": 0, "o": 1, "u": 2}[gate] if gate != "f" else 3 + k
        return p["W"][l * H : (l + 1) * H, col * H : (col + 1) * H]

    def node(t):
        token, kids = (str(t), []) if isinstance(t, int) else (t[0], [node(k) for k in t[1:]])
        kids += [(np.zeros(H), np.zeros(H))] * (N - len(kids))
        x = p["E"][td.TOKEN_ID[token]]

        def pre(gate, k=0):
            return (
                x @ U[gate][0]
                + U[gate][1]
                + sum(h @ W(gate, l, k) for l, (h, _) in enumerate(kids))
            )

        i, o, u = sigmoid(pre("i")), sigmoid(pre("o")), np.tanh(pre("u"))  # eq. 9, 11, 12
        f = [sigmoid(pre("f", k)) for k in range(N)]  # eq. 10
        c = i * u + sum(f[l] * c_l for l, (_, c_l) in enumerate(kids))  # eq. 13
        return o * np.tanh(c), c  # eq. 14

    return log_softmax(node(tree)[0] @ p["V"] + p["c"])


TREES = [
    7,
    ("-", 3, 8),
    ("+", ("*", 3, 4), 7, ("-", 9, 1)),
    ("-", ("-", 1, 2, 3), ("*", ("+", 4, 5), 6)),
    ("*", 2, ("-", ("+", 1, ("-", 5, 0, 9)), 4), 3),
]


def test_values_mod_10_and_the_order_of_subtraction():
    assert td.evaluate_tree(("+", ("*", 3, 4), 7, ("+", 9, 1))) == (12 + 7 + 10) % 10
    assert td.evaluate_tree(("*", 5, 4)) == 0
    assert td.evaluate_tree(("-", 3, 5, 9)) == (3 - 5 - 9) % 10 == 9
    assert td.evaluate_tree(("-", 9, 5, 3)) == 1
    assert td.evaluate_tree(7) == 7
    assert [td.tree_height(t) for t in TREES] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="op in"):
        td.apply_op("/", [1, 2])


@pytest.mark.parametrize("name", list(CELLS))
def test_batched_levels_equal_the_papers_equations(rng, name):
    chex.clear_trace_counter()  # the counter is per function definition, not per parameter
    cell = CELLS[name]()
    params = random_like(rng, cell.init(jax.random.fold_in(rng, 1)))
    batch = td.batch_trees(TREES)
    widths = td.level_widths(batch)
    assert len(widths) == 5 and widths[-1] == 1  # one tree of height 4: one root up there
    chex.assert_shape(batch.children, (5, sum(widths), 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def batched(params, batch):
        return tl.apply(cell, params, batch, widths)

    got = batched(params, jax.tree.map(jnp.asarray, batch))
    batched(params, jax.tree.map(jnp.asarray, batch))  # same shapes: no retrace
    if name == "child-sum":
        want = np.stack([child_sum_oracle(params, t) for t in TREES])
    else:
        want = np.stack([n_ary_oracle(params, t, 3) for t in TREES])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    reference = jnp.stack([tl.apply_reference(cell, params, t) for t in TREES])
    chex.assert_trees_all_close(got, reference, rtol=1e-5, atol=1e-6)
    assert batch.label.tolist() == [td.evaluate_tree(t) for t in TREES]


def test_random_trees_of_every_height_batch_and_equal_the_recursion(rng):
    seed = int(jax.random.randint(rng, (), 0, 2**30))
    np_rng = np.random.default_rng(seed)
    trees = [td.random_tree(np_rng, h, 0.4, td.OPS) for h in (0, 1, 2, 3, 3, 4)]
    assert [td.tree_height(t) for t in trees] == [0, 1, 2, 3, 3, 4]
    cell = tl.n_ary(6, 3, embed=3)
    params = random_like(rng, cell.init(rng))
    batch = td.batch_trees(trees)
    got = APPLY(cell, params, batch, td.level_widths(batch), True)  # (6, P, 10)
    roots = jnp.take_along_axis(got, jnp.asarray(batch.root)[:, None, None], axis=1)[:, 0]
    want = jnp.stack([tl.apply_reference(cell, params, t) for t in trees])
    chex.assert_trees_all_close(roots, want, rtol=1e-5, atol=1e-6)


def _kinds(trees):
    """Mean number of leaves and of inner nodes by op and arity per tree."""
    counts = Counter()

    def walk(t):
        counts["leaf" if isinstance(t, int) else f"{t[0]}{len(t) - 1}"] += 1
        for k in [] if isinstance(t, int) else t[1:]:
            walk(k)

    for t in trees:
        walk(t)
    return {k: v / len(trees) for k, v in counts.items()}


def test_fast_random_batches_are_the_random_trees_laid_out(rng):
    seed = int(jax.random.randint(rng, (), 0, 2**30))
    np_rng = np.random.default_rng(seed)
    batch = td.random_batch(np_rng, 400, 3, 0.3, td.OPS)
    trees = [td.from_table(batch, b) for b in range(400)]
    assert {td.tree_height(t) for t in trees} == {3}
    assert batch.label.tolist() == [td.evaluate_tree(t) for t in trees]
    for b in range(0, 400, 37):  # every slot's value is its subtree's
        for slot in np.flatnonzero(batch.values[b] >= 0):
            sub = td.from_table(batch._replace(root=np.full(400, slot)), b)
            assert batch.values[b, slot] == td.evaluate_tree(sub)
    cell = tl.n_ary(6, 3, embed=3)
    params = random_like(rng, cell.init(rng))
    other = td.batch_trees(trees)  # another layout of the same trees: the same outputs
    chex.assert_trees_all_close(
        APPLY(cell, params, batch, td.level_widths(batch), False),
        APPLY(cell, params, other, td.level_widths(other), False),
        rtol=1e-5,
        atol=1e-6,
    )
    order = np.argsort((batch.values >= 0).sum(1), kind="stable")  # by size, as for training
    small, large = (td.pack(batch, part) for part in np.array_split(order, 2))
    assert sum(td.level_widths(small)) < sum(td.level_widths(large)) <= sum(td.level_widths(batch))
    assert [td.from_table(small, i) for i in range(200)] == [trees[i] for i in order[:200]]
    assert large.label.tolist() == batch.label[order[200:]].tolist()
    # the same distribution as random_tree: node kinds per tree agree within sampling noise
    many = td.random_batch(np_rng, 3000, 3, 0.3, td.OPS)
    fast = _kinds([td.from_table(many, b) for b in range(3000)])
    slow = _kinds([td.random_tree(np_rng, 3, 0.3, td.OPS) for _ in range(3000)])
    assert set(fast) == set(slow)
    for kind in slow:
        assert abs(fast[kind] - slow[kind]) < 0.08 * slow[kind] + 0.05, (kind, fast, slow)


def test_only_the_n_ary_cell_sees_the_order_of_the_children(rng):
    trees = [("-", 3, 8, 1), ("-", 8, 1, 3), ("-", ("+", 1, 2), 5), ("-", 5, ("+", 1, 2))]
    batch = td.batch_trees(trees)
    for name, cell in CELLS.items():
        params = random_like(rng, cell().init(rng))
        out = APPLY(cell(), params, batch, td.level_widths(batch), False)
        same = [bool(jnp.allclose(out[0], out[1], atol=1e-6)), bool(jnp.allclose(out[2], out[3]))]
        assert same == ([True, True] if name == "child-sum" else [False, False]), name


def test_n_ary_child_positions_against_the_batch(rng):
    trees = [("+", 1, 2), ("*", ("+", 1, 2), 3)]
    with pytest.raises(ValueError, match="at most 2; batch the trees with"):
        tl.apply(tl.n_ary(4, 2), tl.n_ary(4, 2).init(rng), td.batch_trees(trees), (3, 1, 1))
    # two positions over a two-column batch, or four over it (zero-padded): both = the paper
    for n in (2, 4):
        cell = tl.n_ary(4, n, embed=3)
        params = random_like(rng, cell.init(rng))
        batch = td.batch_trees(trees, max_children=2)
        got = APPLY(cell, params, batch, td.level_widths(batch), False)
        want = np.stack([n_ary_oracle(params, t, n) for t in trees])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        tl.n_ary(4, 0)


@pytest.mark.parametrize("name", list(CELLS))
def test_gradients_flow_to_every_parameter(rng, name):
    cell = CELLS[name]()
    batch = jax.tree.map(jnp.asarray, td.batch_trees([("+", 1, ("*", 2, 3)), ("-", 4, 5, 6)]))
    params = cell.init(rng)
    widths = td.level_widths(batch)
    grads = jax.jit(jax.grad(lambda p: -jnp.sum(tl.apply(cell, p, batch, widths)[:, 0])))(params)
    for field, g in grads._asdict().items():
        assert float(jnp.abs(g).max()) > 0, field


@pytest.mark.parametrize(
    ("tokens", "children", "message"),
    [
        (["+", "1", "2"], [[1, 2], [0], []], "digits are leaves"),
        (["+", "+", "3"], [[1, 2], [0, 2], []], "two parents"),
        (["+", "+"], [[1, 1], [0, 0]], "two parents"),
        (["+", "*", "1", "2"], [[1, 2], [0, 3], [], []], "cycle"),
        (["+", "1", "2", "*", "3", "4"], [[1, 2], [], [], [0, 4, 5], [], []], None),
        (["+", "1", "9"], [[1, 5], [], []], "outside the table"),
        (["%", "1", "2"], [[1, 2], [], []], "unknown token"),
        (["-", "1", "2", "3", "4"], [[1, 2, 3, 4], [], [], [], []], "more than 3 children"),
    ],
)
def test_malformed_trees_are_refused(tokens, children, message):
    if message is None:  # a well-formed table: + under *
        root, height = td.check_table(tokens, children)
        assert root == 3 and height == [1, 0, 0, 2, 0, 0]
        batch = td.batch_trees([(tokens, children)])
        assert td.level_widths(batch) == (4, 1, 1) and batch.root.tolist() == [5]
        assert batch.label.tolist() == [(1 + 2) * 3 * 4 % 10]
        return
    with pytest.raises(ValueError, match=message):
        td.batch_trees([(tokens, children)])


def test_a_pure_cycle_and_an_empty_batch_are_named():
    with pytest.raises(ValueError, match="cycle"):
        td.check_table(["+", "*", "5", "6"], [[1, 2], [0, 3], [], []])  # 0 → 1 → 0
    with pytest.raises(ValueError, match="at least one tree"):
        td.batch_trees([])


@pytest.mark.slow
def test_tree_app_trains_predicts_and_checks_its_flags(tmp_path):
    out = tmp_path / "tree"
    losses, result = run_tiny(
        "tree",
        out,
        steps=30,
        hidden=16,
        embed=8,
        batch_size=32,
        train_height=2,
        test_heights=[3],
        train_size=300,
        test_size=50,
        three=0.3,
        layouts=2,
        lr=1e-2,
    )
    assert losses[-1] < losses[0]
    ev = result["evaluation"]
    assert ev["cell"] == "child-sum" and ev["accuracy_deeper"] == ev["accuracy_height_3"]
    assert {"accuracy_height_1", "majority_baseline_height_3"} <= set(ev)
    assert {"leaf", "+/2", "+/3", "*/2", "*/3"} <= set(ev["node_accuracy_deeper"])
    for flags, message in [
        (["--train-height", "3", "--test-heights", "3"], "deeper"),
        (["--ops", "+", "/"], "--ops must be distinct"),
        (["--cell", "n-ary", "--n", "2", "--three", "0.2"], "needs a position for every child"),
        (["--three", "1.5"], "probability"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_application(["--task", "tree", "--out", str(tmp_path / "x"), *flags])


def test_n_ary_learns_subtraction_which_child_sum_cannot_tell_apart(tmp_path):
    """a − b mod 10 at height 1: chance 10 %; an order-blind model sees {a, b} and cannot
    beat 60 % (a = b, or a − b = 5, is 20 % of the pairs; the rest are coin flips)."""
    _, result = run_tiny(
        "tree",
        tmp_path / "nary",
        cell="n-ary",
        n=2,
        ops="-",
        train_height=1,
        test_heights=[2],
        steps=300,
        hidden=32,
        embed=16,
        batch_size=64,
        lr=2e-2,
        train_size=2000,
        test_size=200,
        layouts=1,
        seed=0,
    )
    assert result["evaluation"]["accuracy_height_1"] >= 0.9
