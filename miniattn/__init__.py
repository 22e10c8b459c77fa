"""miniattn: a NumPy-from-scratch reference implementation of
"Approximating How Single Head Attention Learns" (Snell, Zhong, Klein, Steinhardt; arXiv 2103.07601).

Modules
-------
layers     hand-written forward/backward blocks (embedding, single- and multi-head attention, softmax output)
recurrent  LSTM and bidirectional LSTM over a padded batch, backpropagation through time (gru: the GRU)
gradcheck  central-difference gradient checking for any forward/backward pair or model
optim      SGD and Adam over a dict of parameters
batch      the two batch types (Seq2SeqBatch, ClassificationBatch)
models     toy gated classifiers, attention classifier, seq2seq attention model, free-parameter copy model
tasks      copy, keyword classification, synthetic translation, text loaders
train      the one training loop: seeded, held-out evaluation, hooks, checkpoints, bit-identical resume
metrics    token accuracy, attention accuracy, the held-out evaluation record
history    what a run has recorded (evaluations, per-step losses and quantities)
checkpoint the checkpoint file: format, atomic writing, full validation on resume
progress   the progress displays (training steps, sweep runs) with a smoothed ETA
io         atomic writes, JSON lines, run metadata
cli        the `miniattn` command line
"""

__version__ = "0.1.0"
