"""Child-Sum Tree-LSTM: batched level-by-level = recursion, malformed trees, a few steps."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models_seq2seq import run_tiny

from rnnjax.models import treelstm as tl
from rnnjax.models.registry import run_application


def test_values_mod_10():
    assert tl.evaluate_tree(("+", ("*", 3, 4), 7, ("+", 9, 1))) == (12 + 7 + 10) % 10
    assert tl.evaluate_tree(("*", 5, 4)) == 0
    assert tl.evaluate_tree(7) == 7


def test_batched_levels_equal_the_recursion_on_trees_of_different_shapes(rng):
    seed = int(jax.random.randint(rng, (), 0, 2**30))
    np_rng = np.random.default_rng(seed)
    trees = [tl.random_tree(np_rng, h) for h in (0, 1, 2, 3, 3, 4)]
    params = tl.init_params(jax.random.fold_in(rng, 1), hidden=8, embed=4)
    params = params._replace(b=params.b + 0.3 * jax.random.normal(rng, params.b.shape))
    batch = tl.batch_trees(trees)
    widths = tl.level_widths(batch)
    assert len(widths) == 5 and widths[-1] == 1  # one tree of height 4: one root up there
    chex.assert_shape(batch.children, (6, sum(widths), 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def batched(params, batch):
        return tl.apply(params, batch, widths)

    got = batched(params, jax.tree.map(jnp.asarray, batch))
    want = jnp.stack([tl.apply_reference(params, t) for t in trees])
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    batched(params, jax.tree.map(jnp.asarray, batch))  # same shapes: no retrace
    labels = [tl.evaluate_tree(t) for t in trees]
    assert batch.label.tolist() == labels


def test_gradients_flow_to_every_parameter(rng):
    trees = [("+", 1, ("*", 2, 3)), ("*", 4, 5, 6)]
    batch = jax.tree.map(jnp.asarray, tl.batch_trees(trees))
    params = tl.init_params(rng, hidden=6, embed=3)
    widths = tl.level_widths(batch)
    grads = jax.jit(jax.grad(lambda p: -jnp.sum(tl.apply(p, batch, widths)[:, 0])))(params)
    for name, g in grads._asdict().items():
        assert float(jnp.abs(g).max()) > 0, name


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
    ],
)
def test_malformed_trees_are_refused(tokens, children, message):
    if message is None:  # a well-formed table: + under *
        root, height = tl.check_table(tokens, children)
        assert root == 3 and height == [1, 0, 0, 2, 0, 0]
        batch = tl.batch_trees([(tokens, children)])
        assert tl.level_widths(batch) == (4, 1, 1) and batch.root.tolist() == [5]
        assert batch.label.tolist() == [(1 + 2) * 3 * 4 % 10]
        return
    with pytest.raises(ValueError, match=message):
        tl.batch_trees([(tokens, children)])


def test_a_pure_cycle_is_named():
    with pytest.raises(ValueError, match="cycle"):
        tl.check_table(["+", "*", "5", "6"], [[1, 2], [0, 3], [], []])  # 0 → 1 → 0


def test_tree_app_trains_and_predicts(tmp_path):
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
        lr=1e-2,
    )
    assert losses[-1] < losses[0]
    ev = result["evaluation"]
    assert set(ev) >= {
        "accuracy_height_1",
        "accuracy_height_3",
        "accuracy_deeper",
        "majority_baseline_height_3",
    }
    assert ev["accuracy_deeper"] == ev["accuracy_height_3"]
    with pytest.raises(ValueError, match="deeper"):
        run_application(
            [
                "--task",
                "tree",
                "--out",
                str(tmp_path / "x"),
                "--train-height",
                "3",
                "--test-heights",
                "3",
            ]
        )
