"""Shared test configuration: hypothesis profiles.

Profiles (select with ``HYPOTHESIS_PROFILE=<name>``; ``ci`` is the default):

* ``ci`` — deterministic (``derandomize=True``: the same examples on every run, so CI never
  flakes), no deadline (grid quadrature in 2-D takes ~1 s per problem, far beyond hypothesis'
  200 ms default), and a modest number of examples so the property tests stay under ~90 s on
  two cores.
* ``dev`` — randomised, fewer examples, for quick local iterations.
* ``thorough`` — randomised and ten times more examples, for a nightly/manual sweep.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Nothing in the suite may reach a model hub: diffusers/peft/transformers work offline only.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}

settings.register_profile("ci", max_examples=20, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=8, **_COMMON)
settings.register_profile("thorough", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# One torch thread per test process: the suite runs under pytest-xdist (one process per core)
# and its tensors are small, where two OpenMP threads per process only add synchronisation
# cost (measured ~50x slower on a busy 2-core machine).
import torch  # noqa: E402

torch.set_num_threads(1)
