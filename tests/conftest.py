"""Hypothesis profiles. ``default``: each property test's own settings, as written (few
derandomized examples: the same ones on every run). ``long`` (``HYPOTHESIS_PROFILE=long``):
random examples, ``HYPOTHESIS_MAX_EXAMPLES`` of them per test (default 2000), for runs that
may take hours; the tests that take their settings from
:func:`jaxsched.testing.property_settings` use it (the simulator invariants).

Each test module's compiled programs are released when it ends: XLA's CPU backend maps
about 18 memory regions per executable, and one pytest process compiling the whole suite
reaches the kernel's limit of 65530 mappings (``vm.max_map_count``) at about 93%, after
which the next compile hangs or aborts the process."""

from __future__ import annotations

import gc
import os

import hypothesis
import jax
import pytest

from jaxsched import testing as jt

hypothesis.settings.register_profile(
    jt.LONG_PROFILE, jt.HYPOTHESIS_SETTINGS, derandomize=False,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "2000")))
if os.environ.get("HYPOTHESIS_PROFILE"):
    hypothesis.settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop every cached executable after each test module (``jax.clear_caches``)."""
    yield
    jax.clear_caches()
    gc.collect()
