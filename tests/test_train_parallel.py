"""Data parallelism: training sharded over 4 (simulated) devices equals single-device training.

The comparison runs in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set before JAX
starts). Tolerance: float32, rtol 1e-5 / atol 1e-6 — the 4-device run sums the gradient
over devices in another order, so the results agree to rounding, not bit for bit.
"""

import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from rnnjax.train import RunConfig, train
    from rnnjax.train.loop import setup, sharded_step
    from rnnjax.train.parallel import make_mesh

    assert jax.device_count() == 4, jax.devices()
    out, corpus = sys.argv[1], sys.argv[2]

    def leaves(tree):
        return [np.asarray(x) for x in jax.tree.leaves(tree)]

    def compare(many, one):
        return {
            "max_rel_diff": max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6)))
                                for a, b in zip(many, one)),
            "close": all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(many, one)),
        }

    # a task: the jitted, sharded train step that `train` uses, on 4 devices and on 1
    task = RunConfig(task="adding", T=10, cell="lstm", hidden=8, batch_size=8, steps=12)
    params, all_reduce = {}, None
    for n in (4, 1):
        mesh = make_mesh(jax.devices()[:n])
        step, state, data, _ = sharded_step(setup(task, mesh=mesh), mesh)
        compiled = step.lower(state, data).compile()
        if n == 4:
            all_reduce = "all-reduce" in compiled.as_text()
        for _ in range(task.steps):
            state, _ = compiled(state, data)
        params[n] = leaves(state.params)
    report = {"task": {**compare(params[4], params[1]), "all_reduce": all_reduce}}

    # text through `train` itself (checkpoints of sharded state, the BPTT carry split by rows)
    text = RunConfig(corpus=corpus, cell="gru", hidden=8, embed=4, batch_size=8, window=8,
                     steps=12, log_every=4)
    many = train(text, f"{out}/text4", progress=None)
    one = train(text, f"{out}/text1", progress=None, devices=jax.devices()[:1])
    report["text"] = {
        **compare(leaves(many["state"].params), leaves(one["state"].params)),
        "carry": [
            {
                "shape": list(c.shape),
                "replicated": c.sharding.is_fully_replicated,
                "devices": len(c.sharding.device_set),
                "rows": [[s.index[0].start, s.index[0].stop] for s in c.addressable_shards],
                "shard_devices": [s.device.id for s in c.addressable_shards],
                "shards_equal_rows": all(
                    np.array_equal(np.asarray(s.data), np.asarray(c)[s.index])
                    for s in c.addressable_shards
                ),
                "distinct_shards": len({np.asarray(s.data).tobytes()
                                        for s in c.addressable_shards}),
            }
            for c in jax.tree.leaves(many["state"].carry)
        ],
        "loss": [many["train"]["loss"], one["train"]["loss"]],
    }
    print(json.dumps(report))
    """
)


@pytest.mark.slow  # a subprocess with four simulated devices
def test_four_devices_equal_one(tmp_path, run_on_devices):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    report = run_on_devices(SCRIPT, str(tmp_path), str(corpus), devices=4)
    for name in ("task", "text"):
        assert report[name]["close"], report[name]
    assert report["task"]["all_reduce"], "the gradients are not reduced over the devices"
    # the BPTT carry is split by rows: each device holds its own quarter of the batch, not a
    # copy of the whole (a replicated array would also live on 4 devices)
    carries = report["text"]["carry"]
    assert carries
    for c in carries:
        rows = c["shape"][0]
        assert not c["replicated"] and c["devices"] == 4, c
        assert sorted(c["rows"]) == [[k * rows // 4, (k + 1) * rows // 4] for k in range(4)], c
        assert len(set(c["shard_devices"])) == 4 and c["shards_equal_rows"], c
        assert c["distinct_shards"] == 4, c  # the quarters hold different values
