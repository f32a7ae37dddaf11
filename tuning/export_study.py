"""A tuned study's trial as a policy file: the bridge from :mod:`tuning.study_storage`'s
studies to :mod:`jaxsched.export.policy_file`'s file format.

It lives in ``tuning`` because it reads studies (Optuna, the tuner's objective and search
space); ``jaxsched`` itself never imports ``tuning`` (only ``jaxsched.cli`` does).
"""

from __future__ import annotations

from optuna.trial import TrialState

from jaxsched.errors import JaxschedError
from jaxsched.export.policy_file import PolicyFile, policy_document
from tuning.objectives import Objective
from tuning.search_space import SearchSpace
from tuning.study_storage import load_study, open_storage, redact_url, study_meta
from tuning.trial_states import best_trials, evaluated_count

__all__ = ["export_from_study"]


def export_from_study(storage: str | None, study_name: str, trial: int | None = None) -> PolicyFile:
    """The policy file of a tuned trial: ``trial`` (a number), else the study's best feasible
    trial (a multi-objective study needs ``trial``: one of its Pareto set)."""
    store = open_storage(storage)
    study = load_study(store, study_name)
    meta = study_meta(study)
    if meta is None:
        raise JaxschedError(f"--study {study_name!r}: was not created by jaxsched tune")
    objective = Objective.from_dict(meta["objective"])
    baseline = study.user_attrs.get("baseline_metrics")
    if baseline is not None:
        objective = objective.with_baseline(baseline)
    trials = study.get_trials(deepcopy=False)
    if trial is None:
        best = best_trials(study, objective)
        if not best:
            raise JaxschedError(f"--study {study_name!r}: no complete feasible trial yet")
        if len(best) > 1 or objective.kind == "pareto":
            nums = ", ".join(str(t.number) for t in best)
            if len(best) > 1:
                raise JaxschedError(
                    f"--study {study_name!r} is multi-objective: choose one of its Pareto-optimal "
                    f"trials with --trial N ({nums})"
                )
        chosen = best[0]
    else:
        match = [t for t in trials if t.number == trial]
        if not match:
            raise JaxschedError(f"--trial {trial}: no such trial in study {study_name!r} "
                                f"(trials 0..{len(trials) - 1})")
        chosen = match[0]
        if chosen.state != TrialState.COMPLETE:
            why = chosen.user_attrs.get("fail_reason")
            raise JaxschedError(f"--trial {trial}: is {chosen.state.name.lower()}"
                                f"{': ' + why if why else ''}; export a complete trial")
    space = SearchSpace.from_dict(meta["space"])
    params = space.plain_values(chosen.params)
    metrics = chosen.user_attrs.get("metrics", {})
    constraints = dict(chosen.constraints)
    obj = {
        **objective.to_dict(),
        "values": dict(zip(objective.names, chosen.values)),
        "constraint_values": constraints,
        "feasible": all(v <= 0 for v in constraints.values()),
    }
    tuning = {
        "method": "optuna",
        "sampler": chosen.user_attrs.get("sampler"),
        "study": study_name,
        "trial": chosen.number,
        "storage": redact_url(store.url),
        "evaluated_trials": evaluated_count(study),
    }
    return policy_document(meta["config"], params, metrics, source=meta["source"],
                           hardware=meta.get("hardware"), fingerprint=meta["workload_fingerprint"],
                           objective=obj, tuning=tuning)
