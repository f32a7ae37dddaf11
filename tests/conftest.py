"""Hypothesis profiles. ``default``: each property test's own settings, as written (few
derandomized examples: the same ones on every run). ``long`` (``HYPOTHESIS_PROFILE=long``):
random examples, ``HYPOTHESIS_MAX_EXAMPLES`` of them per test (default 2000), for runs that
may take hours; the tests that take their settings from
:func:`jaxsched.testing.property_settings` use it (the simulator invariants)."""

from __future__ import annotations

import os

import hypothesis

from jaxsched import testing as jt

hypothesis.settings.register_profile(
    jt.LONG_PROFILE, jt.HYPOTHESIS_SETTINGS, derandomize=False,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "2000")))
if os.environ.get("HYPOTHESIS_PROFILE"):
    hypothesis.settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
