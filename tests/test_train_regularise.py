"""`rnnjax train` with recurrent regularisation: the flags reach the cells, bad rates are
refused with the value, and a small run trains with the masks on."""

import math

import pytest

from rnnjax.cli import main
from rnnjax.train import RunConfig, train
from rnnjax.train.loop import build_model


def test_flags_build_regularised_cells_and_bad_rates_are_refused(tmp_path):
    config = RunConfig(corpus="default", zoneout=0.1, weight_drop=0.3).resolved()
    model, _ = build_model(config, vocab_size=20)
    assert all(c.name == "lstm+regularised" for c in model.stack.cells)
    plain, _ = build_model(RunConfig(corpus="default").resolved(), vocab_size=20)
    assert plain.stack.cells[0].name == "lstm"
    with pytest.raises(ValueError, match="zoneout"):
        RunConfig(corpus="default", zoneout=1.0).resolved()
    assert (
        main(
            ["train", "--corpus", "default", "--weight-drop", "-0.5", "--out", str(tmp_path / "r")]
        )
        == 2
    )


def test_a_small_regularised_text_run_trains(tmp_path):
    config = RunConfig(
        corpus="default",
        cell="lstm",
        hidden=8,
        embed=4,
        batch_size=4,
        window=8,
        steps=4,
        log_every=2,
        eval_every=4,
        checkpoint_every=4,
        input_dropout=0.1,
        recurrent_dropout=0.2,
        zoneout=0.1,
        weight_drop=0.3,
        backend="fused",
    )
    summary = train(config, str(tmp_path / "run"), progress=None)
    assert int(summary["state"].step) == 4 and math.isfinite(summary["train"]["loss"])
