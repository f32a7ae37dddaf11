"""The tuning job: a config, its experiment, the search space and the objective, and the
fingerprint that tells a study whether it tunes this same setup."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from jaxsched import __version__, api
from jaxsched.config import Config, config_snapshot, workload_fingerprint
from jaxsched.errors import JaxschedError
from tuning.objectives import Objective, objective_from_settings
from tuning.search_space import SearchSpace, build_search_space
from tuning.settings import TuneSettings, tune_settings

__all__ = ["TuneJob", "prepare"]


@dataclasses.dataclass(frozen=True)
class TuneJob:
    """Everything a tuning run needs, built from a config and its ``[tune]`` table."""

    config: Config  # with workload.num_workloads = the workloads per trial
    settings: TuneSettings
    experiment: Any  # jaxsched.api.Experiment
    space: SearchSpace
    objective: Objective  # scales possibly unresolved ("baseline")
    snapshot: dict  # self-contained config (jaxsched.config.config_snapshot)
    fingerprint: str  # of snapshot + objective + space
    workload_fingerprint: str

    @property
    def default_study_name(self) -> str:
        src = self.config.source
        stem = Path(src).stem if src.endswith(".toml") else "default" if "default" in src else "config"
        return f"{stem}-{self.experiment.policy.name}"

    def meta(self) -> dict:
        """The setup a study records (:data:`tuning.study_storage.META_KEY`)."""
        return {
            "version": 1,
            "fingerprint": self.fingerprint,
            "workload_fingerprint": self.workload_fingerprint,
            "source": self.config.source,
            "hardware": self.config.resolved.get("hardware"),
            "config": self.snapshot,
            "objective": self.objective.to_dict(),
            "space": self.space.to_dict(),
            "jaxsched_version": __version__,
        }


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def prepare(cfg: Config, settings: TuneSettings | None = None, objective_kind: str | None = None,
            num_workloads: int | None = None) -> TuneJob:
    """Build the tuning job of a config (validating ``[tune]``)."""
    settings = settings or tune_settings(cfg.tune, cfg.source)
    w = num_workloads or settings.num_workloads
    if w is not None and w != cfg.workload.num_workloads:
        cfg = cfg.model_copy(update={"workload": cfg.workload.model_copy(update={"num_workloads": w})})
    exp = api.build_experiment(cfg)
    space = build_search_space(exp.policy, cfg.num_classes, exp.params.policy, cfg.capacity,
                               settings.space, cfg.source)
    if not space.dims:
        raise JaxschedError(
            f"{cfg.source}: policy {exp.policy.name!r} has no parameter to search "
            f"(parameters: {', '.join(exp.policy.params) or 'none'}; see tune.space)"
        )
    objective = objective_from_settings(settings, cfg.source, objective_kind)
    snapshot = config_snapshot(cfg)
    fp = _digest({"config": snapshot, "objective": objective.to_dict(), "space": space.to_dict()})
    return TuneJob(cfg, settings, exp, space, objective, snapshot, fp, workload_fingerprint(cfg))
