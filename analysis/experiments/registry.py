"""The registry of the experiments: id, module and title of each, in the order the report lists them.

This is the one list of experiments (``make reproduce`` reads it through
``python -m analysis.experiments make-deps``). It lives in its own module, which no experiment
imports, so that registering an experiment changes no other experiment's code fingerprint.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ExperimentInfo", "EXPERIMENTS"]


class ExperimentInfo(NamedTuple):
    """Registry entry: id (results directory), module name, and the title used in the report."""

    id: str
    module: str
    title: str


EXPERIMENTS: tuple[ExperimentInfo, ...] = (
    ExperimentInfo("e1", "analysis.experiments.e1_toy",
                   "E1 - Toy gated classifier: closed form vs simulated gradient descent"),
    ExperimentInfo("e2", "analysis.experiments.e2_two_stages",
                   "E2 - Two stages: KTIW first, attention later"),
    ExperimentInfo("e3", "analysis.experiments.e3_agreement",
                   "E3 - Agreement between attention, KTIW probes and saliency"),
    ExperimentInfo("e4", "analysis.experiments.e4_copy",
                   "E4 - Copying permutations vs subsets"),
    ExperimentInfo("e5", "analysis.experiments.e5_phase",
                   "E5 - Phase diagram: vocabulary size and init scale"),
    ExperimentInfo("e6", "analysis.experiments.e6_multihead",
                   "E6 - Multi-head rescue of the permutation task"),
    ExperimentInfo("e7", "analysis.experiments.e7_reduced_vs_sim",
                   "E7 - Reduced ODE vs full simulation"),
    ExperimentInfo("e8", "analysis.experiments.e8_recurrent_copy",
                   "E8 - Copying permutations vs subsets with the paper's recurrent model"),
)
