"""Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (dev | ci | thorough; default dev).

* dev      — quick local runs, random.
* ci       — derandomized (the same examples every run), used by `make test` and CI.
* thorough — many more examples, for a deliberate hunt.
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=30, **_common)
settings.register_profile("ci", max_examples=60, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
