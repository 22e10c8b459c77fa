"""miniattn: a NumPy-from-scratch reference implementation of
"Approximating How Single Head Attention Learns" (Snell, Zhong, Klein, Steinhardt; arXiv 2103.07601).

Modules
-------
layers     hand-written forward/backward blocks (embedding, single- and multi-head attention, softmax output)
gradcheck  central-difference gradient checking for any forward/backward pair or model
optim      SGD and Adam over a dict of parameters
batch      the two batch types (Seq2SeqBatch, ClassificationBatch)
models     toy gated classifiers, attention classifier, seq2seq attention model, free-parameter copy model
tasks      copy, keyword classification, synthetic translation, text loaders
train      seeded training loop with held-out evaluation, atomic checkpoints and bit-identical resume
io         atomic writes, JSON lines, run metadata
cli        the `miniattn` command line
"""

__version__ = "0.1.0"
