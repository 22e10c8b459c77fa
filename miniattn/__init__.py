"""miniattn: a NumPy-from-scratch reference implementation of
"Approximating How Single Head Attention Learns" (Snell, Zhong, Klein, Steinhardt; arXiv 2103.07601).

Modules
-------
layers     hand-written forward/backward blocks (embedding, attention, softmax output)
gradcheck  central-difference gradient checking for any forward/backward pair
optim      SGD and Adam over a dict of parameters
"""

__version__ = "0.1.0"
