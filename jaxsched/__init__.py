"""jaxsched: design, tune and ship KV-memory scheduling policies for LLM inference.

The model of the system is stated once, in :mod:`jaxsched.core.model`.

The names below are imported on first use (PEP 562), so that ``import jaxsched.cli`` (and a
usage error, or ``--version``) does not pay for importing JAX.
"""

import importlib

_LAZY = {  # name: the module it comes from
    "Experiment": "jaxsched.api",
    "SimulationResult": "jaxsched.api",
    "build_experiment": "jaxsched.api",
    "build_workloads": "jaxsched.api",
    "run": "jaxsched.api",
    "run_experiment": "jaxsched.api",
    "workload_context": "jaxsched.api",
    "DEFAULT_CONFIG": "jaxsched.config",
    "Config": "jaxsched.config",
    "load_config": "jaxsched.config",
    "JaxschedError": "jaxsched.errors",
    "METRIC_KEYS": "jaxsched.core.metrics",
    "SimShape": "jaxsched.core.model",
    "SystemParams": "jaxsched.core.model",
    "Workload": "jaxsched.core.model",
    "system_params": "jaxsched.core.model",
    "Policy": "jaxsched.policies",
    "get_policy": "jaxsched.policies",
    "list_policies": "jaxsched.policies",
    "make_params": "jaxsched.policies",
    "SimParams": "jaxsched.core.sim",
    "compiled_simulator": "jaxsched.core.rollout",
    "simulate": "jaxsched.core.rollout",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jaxsched' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Config",
    "DEFAULT_CONFIG",
    "Experiment",
    "JaxschedError",
    "METRIC_KEYS",
    "Policy",
    "SimParams",
    "SimShape",
    "SimulationResult",
    "SystemParams",
    "Workload",
    "__version__",
    "build_experiment",
    "build_workloads",
    "compiled_simulator",
    "get_policy",
    "list_policies",
    "load_config",
    "make_params",
    "run",
    "run_experiment",
    "simulate",
    "system_params",
    "workload_context",
]
