"""Models. Every model exposes

* ``params`` — dict name -> float array (the optimiser updates these in place);
* ``loss_and_grads(batch) -> (loss: float, grads: dict)`` with grads keyed like ``params``;
* ``forward(batch) -> ForwardResult`` with ``log_probs`` and ``attention`` (per head where there are
  heads);
* construction from a ``numpy.random.Generator`` with a documented ``init_scale``;
* ``uniform=True`` for the paper's uniform-attention twin.
"""

from miniattn.models.base import ForwardResult
from miniattn.models.classifier import AttentionClassifier
from miniattn.models.free_copy import FreeAttentionCopyModel
from miniattn.models.rnn_classifier import RecurrentAttentionClassifier
from miniattn.models.rnn_seq2seq import RecurrentSeq2SeqAttention
from miniattn.models.seq2seq import Seq2SeqAttention
from miniattn.models.toy import GatedToyClassifier, SoftmaxGatedToyClassifier

__all__ = ["ForwardResult", "AttentionClassifier", "FreeAttentionCopyModel", "Seq2SeqAttention",
           "RecurrentAttentionClassifier", "RecurrentSeq2SeqAttention", "GatedToyClassifier",
           "SoftmaxGatedToyClassifier"]
