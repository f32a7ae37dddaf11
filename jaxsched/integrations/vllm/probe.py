"""The speed probe of a vLLM replay: fixed host work timed after every step.

A step of vLLM on the CPU is a few milliseconds of torch calls and Python. On a shared
2-core machine its speed is not a property of the step: the same request list replayed in one
process took 0.64-1.35x the fitted step times, with preemptions changing alongside (the clock
decides when requests arrive), and a busy or memory-bound job on the other core slowed steps
by up to 1.4-2.3x. The host also switched between speed states by itself (the probe below
took either about 80 or 120-140 us with nothing else running). No timer removes that.

The probe measures the state instead. After each step it runs the same small work, a few
torch matmuls and a Python dict build and sort (the two kinds of work a vLLM step is made
of), timed with the replay's own timer: ``p_k``. A step measured ``dt_k`` is charged

    dt_k' = dt_k * p_ref / median(p_{k-w+1}, ..., p_k)        (w = 5 by default)

where ``p_ref`` is the probe's time when the engine was calibrated (the median of many runs,
:meth:`SpeedProbe.measure_reference`, written to the profile as ``[calibration]
probe_reference_s``). The rolling median is causal and drops a single probe that an
interrupt hit. Over 18 replays of two request lists with nothing, a busy loop or a memory
hog on the other core, the spread (coefficient of variation) of a replay's total step time
fell from 32-35% to 3.3-5.1% (one median per replay instead of a rolling one: 5.7-7.5%).
This is the jaxsched engine's normalization (:class:`jaxsched.engine.calibrate.MeasuredCalls`)
for an engine whose step cannot be rerun: there the probe is a padded decode call and the
ratio is taken per call.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

__all__ = ["SpeedProbe", "normalized_duration"]


def normalized_duration(dt: float, probes: list[float], reference: float, window: int = 5
                        ) -> float:
    """``dt * reference / median(probes[-window:])`` (``dt`` when there are no probes)."""
    if not probes:
        return dt
    recent = float(np.median(probes[-window:]))
    return dt * reference / recent if recent > 0 else dt


class SpeedProbe:
    """Fixed work to time beside each step (module docstring). ``reference`` is ``p_ref``
    (NaN until measured or given); ``probes`` the times of this replay's probes."""

    def __init__(self, timer: Callable[[], float] = time.process_time,
                 reference: float = math.nan, window: int = 5, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self._x = torch.randn(16, 64, generator=g)
        self._w = torch.randn(64, 64, generator=g) / 8.0
        self.timer = timer
        self.reference = float(reference)
        self.window = int(window)
        self.probes: list[float] = []

    def _work(self) -> None:
        import torch

        x = self._x
        for _ in range(6):
            x = torch.tanh(x @ self._w)
        table = {i: (i, (i * 7919) % 300) for i in range(300)}
        sorted(table.items(), key=lambda kv: -kv[1][1])

    def time(self) -> float:
        """Run the work once and return its time on :attr:`timer`."""
        t0 = self.timer()
        self._work()
        return self.timer() - t0

    def measure_reference(self, samples: int = 200) -> float:
        """Set and return :attr:`reference`: the median of ``samples`` runs (after one
        unmeasured run)."""
        self._work()
        self.reference = float(np.median([self.time() for _ in range(samples)]))
        return self.reference

    def start(self) -> None:
        """Forget the probes of an earlier replay."""
        self.probes = []

    def normalize(self, dt: float) -> float:
        """Time one probe now and return ``dt`` at the reference speed."""
        self.probes.append(self.time())
        return normalized_duration(dt, self.probes, self.reference, self.window)
