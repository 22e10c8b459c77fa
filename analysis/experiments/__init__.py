"""The experiments of the reproduction, one module each (E1-E8).

Each module defines ``runs(profile)``, ``run(config)``, ``claims(results)`` and ``figures(results)``
(see :mod:`analysis.experiments.framework`, which computes, stores and plots them); the list of
experiments is :mod:`analysis.experiments.registry`. The command line is
``python -m analysis.experiments {compute,plot,all} <id>``. ``REPORT.md`` is built from the result
files by :mod:`analysis.report`.

This file holds no code on purpose: every experiment module imports it (as its package), so its
code is part of every experiment's fingerprint.
"""
