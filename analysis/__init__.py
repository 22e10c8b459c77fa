"""analysis: the paper's quantities, the co-occurrence approximation, the reduced dynamics and the
experiments. Imports :mod:`miniattn`; never imported by it."""
