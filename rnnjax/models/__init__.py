"""The lecture's applications as small, real models (``rnnjax train --task NAME``).

- `translate`: English → Russian number words, LSTM encoder–decoder (greedy and beam search).
- `caption`: captions of rows of 8×8 digits, a flax.nnx convnet feeding an LSTM decoder.
- `qa`: questions about generated stories, encoder over story + question, decoder answers.
- `handwriting_recognition`: pen trajectories of Hershey-font words, BLSTM + CTC (Graves 2009).
- `handwriting`: synthesis of those trajectories, LSTM + attention window + mixture density
  output (Graves 2013), its legibility measured by the recogniser.
- `tree`: value mod 10 of arithmetic expression trees, Child-Sum Tree-LSTM.

Shared pieces: `seq2seq` (encoder–decoder), `decoding` (greedy, beam, BLEU), `training`
(flags, fit loop, result files) and `registry` (the applications by name).
"""

from rnnjax.models.registry import APPLICATIONS, App, run_application

__all__ = ["APPLICATIONS", "App", "run_application"]
