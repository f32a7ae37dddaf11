"""The JAX decode engine: a Llama-style model over a paged KV cache, continuously batched by
the same policy functions the simulator runs (see :mod:`jaxsched.engine.batching`)."""

from jaxsched.engine.batching import (
    Engine,
    EngineMetrics,
    IterationRecord,
    PolicyScheduler,
    RequestError,
    RequestOutput,
    SamplingParams,
)
from jaxsched.engine.build import build_engine
from jaxsched.engine.config import TINY, EngineConfig, ModelConfig, load_model_config
from jaxsched.engine.model import Llama, init_params
from jaxsched.engine.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from jaxsched.engine.weights import (
    WeightsError,
    load_orbax,
    load_safetensors,
    load_weights,
    save_orbax,
    save_safetensors,
)

__all__ = [
    "ByteTokenizer",
    "Engine",
    "EngineConfig",
    "EngineMetrics",
    "HFTokenizer",
    "IterationRecord",
    "Llama",
    "ModelConfig",
    "PolicyScheduler",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "TINY",
    "WeightsError",
    "build_engine",
    "init_params",
    "load_model_config",
    "load_orbax",
    "load_safetensors",
    "load_tokenizer",
    "load_weights",
    "save_orbax",
    "save_safetensors",
]
