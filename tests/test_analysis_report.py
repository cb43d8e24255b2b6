"""rnnjax.analysis: `diagnose`, `plot_report` and the ``rnnjax grads`` command."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_analysis_norms import _reference

import rnnjax as rj
from rnnjax import analysis
from rnnjax.analysis.command import add_grads_arguments, build, run_grads

H, T, D = 4, 40, 2
LINEAR = rj.simple_rnn(H, activation="identity")


def _linear_params(W):
    return LINEAR.init(jax.random.key(0), D)._replace(W=W)


@pytest.mark.parametrize(
    ("scale", "regime"), [(1.5, "exploding"), (1.0, "healthy"), (0.5, "vanishing")]
)
def test_verdict_follows_the_end_to_end_norm(scale, regime):
    """Linear RNN, W = scale · orthogonal: ‖∂c_T/∂c_0‖ = scale^T exactly."""
    Q = jax.nn.initializers.orthogonal()(jax.random.key(1), (H, H))
    xs = jax.random.normal(jax.random.key(2), (2, T, D))
    report = analysis.diagnose(
        LINEAR, _linear_params(scale * Q), xs, contributions=False, lyapunov_k=None
    )
    assert report.regime == regime and report.verdict.startswith(regime)
    np.testing.assert_allclose(report.log10_backward_mean[0], T * np.log10(scale), atol=1e-4)
    np.testing.assert_allclose(report.rate_per_step, scale, rtol=1e-5)
    assert f"{scale**T:.2g}" in report.verdict
    assert report.bound is not None and f"{report.bound.eta:.3g}" in report.verdict


def test_full_report_of_an_lstm_is_consistent_json_and_a_figure(tmp_path):
    cell = rj.lstm(H)
    params = cell.init(jax.random.key(3), D)
    xs = jax.random.normal(jax.random.key(4), (2, 16, D))
    report = analysis.diagnose(cell, params, xs, lyapunov_k=3)
    # ‖∂c_T/∂c_t‖ from jacfwd of the explicitly unrolled map (not from the analysis code)
    _, back, _ = _reference(cell, params, xs, cell.initial_carry(params, (2,)))
    np.testing.assert_allclose(report.log10_backward, back / np.log(10), rtol=1e-5, atol=1e-5)
    assert np.ptp(back) > 0.5  # the norms really vary along t
    assert report.carry_size == 2 * H and report.T == 16 and report.batch == 2
    assert report.log10_loss_grad.shape == (2, 17)
    assert report.log10_contributions.shape == (16, 16) and report.log10_lag_norms.shape == (16,)
    assert np.all(np.isneginf(np.triu(report.log10_contributions, 1)[np.triu_indices(16, 1)]))
    assert report.lyapunov.shape == (3,) and report.bound.gate.gate == "forget"
    assert "forget gate" in report.verdict and "λ_max" in report.verdict
    path = tmp_path / "report.json"
    report.save_json(str(path))
    loaded = json.loads(path.read_text())
    assert loaded["regime"] == report.regime and loaded["bound"]["gate"]["gate"] == "forget"
    assert loaded["log10_contributions"][0][1] is None  # −inf above the diagonal -> null
    fig = analysis.plot_report(report)
    assert len(fig.axes) >= 6 and report.regime in fig._suptitle.get_text()
    check_figure(fig, report)
    fig.savefig(tmp_path / "report.png", dpi=40)
    width, height = fig.get_size_inches() * 40
    check_png(tmp_path / "report.png", size=(round(height), round(width)))


def check_figure(fig, report):
    """The panels hold the report's numbers under readable titles and axis labels."""
    top_left = fig.axes[0]
    assert top_left.get_title() == "How much of a change of c_t reaches c_T"
    assert top_left.get_xlabel() == "t" and top_left.get_ylabel() == "‖∂c_T/∂c_t‖"
    mean = [line for line in top_left.get_lines() if line.get_label() == "measured (batch mean)"]
    assert len(mean) == 1
    np.testing.assert_allclose(mean[0].get_xdata(), np.arange(report.T + 1))
    np.testing.assert_allclose(mean[0].get_ydata(), report.log10_backward_mean, rtol=1e-12)
    per_example = [line.get_ydata() for line in top_left.get_lines()[: report.batch]]
    np.testing.assert_allclose(per_example, report.log10_backward, rtol=1e-12)
    for ax in fig.axes[:3]:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    heat = [ax for ax in fig.axes if ax.get_images()]
    assert heat and heat[0].get_ylabel() == "loss term L_t (t)"
    image = np.ma.getdata(heat[0].get_images()[0].get_array())
    np.testing.assert_allclose(image[np.isfinite(image)], report.log10_contributions[
        np.isfinite(report.log10_contributions)], rtol=1e-12)  # fmt: skip


def check_png(path, size):
    """A PNG of ``size`` = (rows, columns) pixels with drawn content (not one flat colour)."""
    from matplotlib.image import imread

    pixels = imread(path)  # (rows, columns, RGBA) floats in [0, 1]
    assert pixels.shape[:2] == size
    rgb = pixels[..., :3].reshape(-1, 3)
    assert np.mean(np.any(rgb < 0.9, axis=1)) > 0.02  # more than 2% of the pixels are inked
    assert len(np.unique(np.round(rgb, 2), axis=0)) > 20  # lines, text and the colour map


def test_diagnose_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="vanishing_below"):
        analysis.diagnose(LINEAR, _linear_params(jnp.eye(H)), jnp.ones((T, D)), vanishing_below=2.0)


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_grads_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_grads_writes_the_report_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "grads"
    argv = ["--cell", "gru", "--hidden", "3", "--T", "8", "--batch", "2", "--lyapunov", "2"]
    assert run_grads(_args(*argv, "--out", str(out))) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert data["cell"] == "gru" and data["T"] == 8 and data["regime"] in printed
    check_png(out / "report.png", size=(1045, 1870))  # the 9.5 × 17 inch figure at 110 dpi
    with pytest.raises(ValueError, match="--force"):
        run_grads(_args(*argv, "--out", str(out)))
    assert run_grads(_args(*argv, "--init", "rho=0.5", "--out", str(out), "--force")) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hidden", "0"], "--hidden must be >= 1"),
        (["--T", "0"], "--T must be >= 1"),
        (["--batch", "-1"], "--batch must be >= 1"),
        (["--init", "rho=abc"], "rho must be a number"),
        (["--init", "glorot"], "unknown init"),
        (["--init", "chrono=1"], "T must be an integer > 2"),
        (["--cell", "multiplicative_rnn", "--init", "rho=1.5"], "square recurrent matrix"),
        (["--lyapunov", "-2"], "--lyapunov must be >= 0"),
    ],
)
def test_grads_flags_are_validated(argv, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build(_args(*argv, "--out", str(tmp_path)))


@pytest.mark.parametrize(
    "init", ["default", "sigmoid", "basic_tanh", "smart_tanh", "irnn", "rho=1.5", "chrono=100"]
)
def test_grads_and_train_accept_the_same_inits(init, tmp_path):
    """One rule for --init in both commands: schemes for the Simple RNN, rho=R for every cell
    with a square recurrent matrix, chrono=T for the LSTM; what one refuses, the other refuses
    with the same words."""
    from rnnjax.train import build_cells

    for cell in ("simple_rnn", "lstm", "gru", "multiplicative_rnn"):
        args = _args("--cell", cell, "--init", init, "--hidden", "16", "--T", "3",
                     "--out", str(tmp_path))  # fmt: skip
        refused = (
            (init not in ("default", "rho=1.5", "chrono=100") and cell != "simple_rnn")
            or (init == "rho=1.5" and cell == "multiplicative_rnn")
            or (init == "chrono=100" and cell != "lstm")
        )
        if refused:
            with pytest.raises(ValueError) as by_grads:
                build(args)
            with pytest.raises(ValueError) as by_train:
                build_cells(cell, 16, init=init)
            assert str(by_train.value) == str(by_grads.value)
            continue
        built, params, xs = build(args)
        assert build_cells(cell, 16, init=init)[0].name == cell
        assert built.name == cell and xs.shape == (8, 3, 16)
        if init == "rho=1.5" and cell == "simple_rnn":
            rho = np.max(np.abs(np.linalg.eigvals(np.asarray(params.W, np.float64))))
            np.testing.assert_allclose(rho, 1.5, rtol=1e-5)
