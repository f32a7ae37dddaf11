"""jaxsched: design, tune and ship KV-memory scheduling policies for LLM inference.

The model of the system is stated once, in :mod:`jaxsched.model`.
"""

from jaxsched.api import (
    Experiment,
    SimulationResult,
    build_experiment,
    build_workloads,
    run,
    run_experiment,
    workload_context,
)
from jaxsched.config import DEFAULT_CONFIG, Config, load_config
from jaxsched.errors import JaxschedError
from jaxsched.metrics import METRIC_KEYS
from jaxsched.model import SimShape, SystemParams, Workload, system_params
from jaxsched.policies import Policy, get_policy, list_policies, make_params
from jaxsched.rollout import compiled_simulator, simulate
from jaxsched.sim import SimParams

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
