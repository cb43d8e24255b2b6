"""The character-level LSTM recipe of `char_lm.py --versus-pytorch`, written in plain PyTorch.

The same model (embedding E → L stacked LSTM layers of H units → linear readout V), the same
data (the streams `rnnjax.data.prepare_text` cuts: window k of the B rows at step k mod n,
the carry handed from one window to the next and reset to zero with every epoch), the same
optimiser (Adam — PyTorch's multi-tensor ``foreach`` form —, global-norm clipping) and the
same validation (the validation streams window
by window with the carry, the mean of the windows' mean NLL, in bits per character) as
`rnnjax train --corpus`. Each library keeps its own initialisation (PyTorch: every weight and
both biases U(±1/√H), so the forget bias starts near 0; rnnjax: LeCun-normal U, orthogonal W,
forget bias 1).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np


def make_model(vocab_size: int, recipe: dict[str, Any]):
    """The PyTorch model: ``(tokens (B, W) int64, carry) -> (log-probs (B, W, V), carry)``."""
    import torch
    from torch import nn

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, recipe["embed"])
            self.rnn = nn.LSTM(
                recipe["embed"], recipe["hidden"], recipe["layers"], batch_first=True
            )
            self.out = nn.Linear(recipe["hidden"], vocab_size)

        def forward(self, tokens, carry):
            ys, carry = self.rnn(self.embed(tokens), carry)  # (B, W, H)
            return torch.log_softmax(self.out(ys), dim=-1), carry  # (B, W, V)

    return CharLSTM()


def _nll(log_probs, targets):
    from torch import nn

    return nn.functional.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1))


def validation_bpc(model, val_streams: np.ndarray, window: int) -> float:
    """The validation streams window by window with the carry: the mean of the windows' mean
    NLL, in bits per character (as `rnnjax.train.evaluate.text_evaluator`)."""
    import torch

    val = torch.from_numpy(np.asarray(val_streams, np.int64))  # (B_val, N_val)
    carry, losses = None, []
    with torch.inference_mode():
        for k in range((val.shape[1] - 1) // window):
            chunk = val[:, k * window : k * window + window + 1]  # (B_val, W + 1)
            log_probs, carry = model(chunk[:, :-1], carry)
            losses.append(float(_nll(log_probs, chunk[:, 1:])))
    return float(np.mean(losses)) / math.log(2.0)


def make_trainer(model, train_streams: np.ndarray, recipe: dict[str, Any]):
    """``step() -> loss``: one truncated-BPTT update per call — window k = (calls so far) mod n
    of the (B, N) streams, the carry from the previous window (reset to zeros with every
    epoch, gradients stopped at the window's start), mean NLL, global-norm clipping at
    ``recipe["clip"]``, Adam at ``recipe["lr"]``."""
    import torch
    from torch import nn

    W = recipe["window"]
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"], foreach=True)
    data = torch.from_numpy(np.asarray(train_streams, np.int64))  # (B, N)
    n = (data.shape[1] - 1) // W
    state: dict[str, Any] = {"step": 0, "carry": None}

    def step():
        k = state["step"] % n
        if k == 0:
            state["carry"] = None  # a new epoch starts from zeros
        chunk = data[:, k * W : k * W + W + 1]  # (B, W + 1)
        log_probs, carry = model(chunk[:, :-1], state["carry"])
        state["carry"] = tuple(c.detach() for c in carry)  # gradients stop at the window
        loss = _nll(log_probs, chunk[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), recipe["clip"])
        optimizer.step()
        state["step"] += 1
        return loss.detach()

    return step


class PytorchRun:
    """The PyTorch loop, trained in slices of wall time: each `run` continues where the last
    stopped (same model, optimiser, carry and window), so that it can alternate with rnnjax's
    loop on the same machine.

    Args:
        train_streams: int32 (B, N) training streams.
        val_streams: int32 (B_val, N_val) validation streams.
        vocab_size: V.
        recipe: ``embed``, ``hidden``, ``layers``, ``window``, ``lr``, ``clip``,
            ``log_every``, ``eval_every``.
        seed: torch's seed.
    """

    def __init__(self, train_streams, val_streams, vocab_size: int, recipe: dict, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.model = make_model(vocab_size, recipe)
        self.train_step = make_trainer(self.model, train_streams, recipe)
        self.val_streams, self.recipe = val_streams, recipe
        self.step, self.train_time, self.wall_time = 0, 0.0, 0.0
        self.curve: list[tuple[int, float]] = []

    def run(self, seconds: float) -> dict[str, Any]:
        """Trains for ``seconds`` of wall time (checked every ``log_every`` steps, as `rnnjax
        train` does), evaluating every ``eval_every`` steps and at the end.

        Returns:
            This slice's ``steps`` and ``steps_per_s`` (training time only).
        """
        recipe = self.recipe
        steps, train_time = 0, 0.0
        t0 = t_log = time.perf_counter()
        while True:
            self.train_step()
            steps += 1
            self.step += 1
            out_of_time = (
                self.step % recipe["log_every"] == 0 and time.perf_counter() - t0 > seconds
            )
            if self.step % recipe["eval_every"] == 0 or out_of_time:
                train_time += time.perf_counter() - t_log
                bpc = validation_bpc(self.model, self.val_streams, recipe["window"])
                self.curve.append((self.step, bpc))
                t_log = time.perf_counter()  # evaluation is not training time
            if out_of_time:
                break
        self.train_time += train_time
        self.wall_time += time.perf_counter() - t0
        return dict(steps=steps, steps_per_s=steps / train_time)

    def summary(self) -> dict[str, Any]:
        """``steps``, ``steps_per_s`` (training time only), ``wall_s``, ``val_bpc`` (at the
        end), ``val_curve`` ((step, bpc) pairs), ``n_params``, ``threads``."""
        import torch

        return dict(
            steps=self.step,
            steps_per_s=self.step / self.train_time,
            wall_s=self.wall_time,
            val_bpc=self.curve[-1][1],
            val_curve=self.curve,
            n_params=sum(p.numel() for p in self.model.parameters()),
            threads=torch.get_num_threads(),
        )
