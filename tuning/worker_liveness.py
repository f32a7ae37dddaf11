"""Several workers on one study: who owns a running trial, whether that worker is alive, and
the atomic state changes that let exactly one worker claim, fail or requeue a trial.

* A worker is ``host:pid:start`` (:func:`worker_id`; ``start`` tells a reused pid apart).
* It records Optuna heartbeats for its trials in flight (:class:`Heartbeat`); a trial left
  ``RUNNING`` by a dead worker is failed by the next one (:func:`fail_interrupted`): at once
  when that worker ran on the same host and its process is gone, else when its heartbeat is
  older than :data:`GRACE_PERIOD`.
* A trial is started with its owner recorded in the same write (:func:`start_trial`), so no
  moment leaves a running trial without an owner; a trial created beyond the study's target
  by a race between workers is found by :func:`surplus`.
* Failing a trial (:func:`fail_trial`) is one conditional state change: if two workers try,
  one wins, and the winner enqueues the baseline again when the failed trial was the baseline.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from tuning.optuna_logs import quiet
from tuning.trial_states import BASELINE_ATTR, is_live

__all__ = [
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "worker_id",
    "storage_of",
    "trial_id",
    "Heartbeat",
    "enqueue_baseline",
    "requeue_baseline",
    "start_trial",
    "fail_trial",
    "fail_interrupted",
    "surplus",
]

HEARTBEAT_INTERVAL = 10
"""Seconds between a worker's heartbeats for its running trials."""

GRACE_PERIOD = 60
"""Seconds without a heartbeat after which another worker fails a running trial."""


def worker_id() -> str:
    """This process as a worker: ``host:pid:start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def _start_ticks(pid: int) -> str:
    """Process start time in clock ticks since boot (Linux), '' elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _start_ticks(pid) == start


def storage_of(study) -> optuna.storages.BaseStorage:
    """The storage a study lives in."""
    # Private, unavoidable: Study has no public accessor for its storage, and the conditional
    # state changes here (claim a waiting trial, fail a running one) exist only on the storage.
    return study._storage


def trial_id(study, number: int) -> int:
    """The storage id of the study's trial ``number`` (public lookups only)."""
    storage = storage_of(study)
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)


class Heartbeat:
    """Record Optuna heartbeats for the trials in flight, every :data:`HEARTBEAT_INTERVAL` s."""

    def __init__(self, storage):
        self.storage = storage
        self.ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self, ids: Sequence[int]) -> None:
        """Beat for ``ids`` (trial ids) now, and from now on for them only."""
        with self._lock:
            self.ids = list(ids)
        for i in ids:
            self.storage.record_heartbeat(i)

    def _run(self):
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            with self._lock:
                ids = list(self.ids)
            for i in ids:
                try:
                    self.storage.record_heartbeat(i)
                except Exception:  # a transient database error must not kill the worker
                    pass


def enqueue_baseline(study, params: Mapping[str, Any]) -> None:
    """Queue the config's own parameters as the next trial to claim."""
    with quiet():
        study.enqueue_trial(dict(params), user_attrs={BASELINE_ATTR: True})


def requeue_baseline(study, trial) -> None:
    """Enqueue the baseline again when its trial was failed unevaluated (Optuna's
    ``failed_trial_callback`` for stale trials, and :func:`fail_trial`)."""
    if trial.user_attrs.get(BASELINE_ATTR):
        # killed before its parameters were sampled: they are still the enqueued ones
        params = trial.params or trial.system_attrs.get("fixed_params")
        if params:
            enqueue_baseline(study, params)


def start_trial(study, attrs: dict, hb: Heartbeat) -> tuple[int, bool]:
    """Start a trial whose worker is recorded atomically with its creation (so a worker killed
    at any moment leaves no running trial without an owner): ``(trial_id, claimed)``.

    A trial waiting in the study's queue (``Study.enqueue_trial``: the baseline) is claimed
    first (``claimed``); its owner is written before the claim and again after it, and a
    heartbeat right after, so the one claim that wins is attributed to its claimer.
    """
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        tid = trial_id(study, waiting.number)
        try:
            for k, v in attrs.items():
                storage.set_trial_user_attr(tid, k, v)
            if storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                hb.storage.record_heartbeat(tid)
                for k, v in attrs.items():
                    storage.set_trial_user_attr(tid, k, v)
                return tid, True
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=dict(attrs))
    tid = storage.create_new_trial(study_id, template_trial=template)
    hb.storage.record_heartbeat(tid)
    return tid, False


def surplus(study, created: Sequence[int], target: int) -> list[int]:
    """Of the trials this worker ``created`` (ids), those beyond the target: at least
    ``target`` live trials (:func:`tuning.trial_states.is_live`) have a smaller number."""
    if not created:
        return []
    storage = storage_of(study)
    live = sorted(t.number for t in study.get_trials(deepcopy=False) if is_live(t))
    out = []
    for tid in created:
        number = storage.get_trial_number_from_id(tid)
        if sum(n < number for n in live) >= target:
            out.append(tid)
    return out


def fail_trial(study, trial, reason: str) -> bool:
    """Fail a running ``trial`` (frozen or live) unevaluated; True if this call did it, in
    which case a baseline trial is enqueued again."""
    storage = storage_of(study)
    tid = trial_id(study, trial.number)
    try:
        storage.set_trial_user_attr(tid, "fail_reason", reason)
        ok = bool(storage.set_trial_state_values(tid, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker finished or failed it first
    if ok:
        requeue_baseline(study, storage.get_trial(tid))
    return ok


def fail_interrupted(study) -> list[int]:
    """Fail the trials left running by dead workers; returns their numbers.

    Same host: the recorded worker process is gone. Any host: no heartbeat for
    :data:`GRACE_PERIOD` seconds (Optuna's stale-trial check), or no worker recorded and started
    more than :data:`GRACE_PERIOD` seconds ago.
    """
    host = socket.gethostname()
    failed = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker:
            h, _, rest = worker.partition(":")
            pid_s, _, start = rest.partition(":")
            if h == host and pid_s.isdigit() and int(pid_s) != os.getpid() and \
                    not _alive(int(pid_s), start):
                if fail_trial(study, t, f"interrupted: worker {worker} exited"):
                    failed.append(t.number)
        elif t.datetime_start is not None and \
                (now - t.datetime_start).total_seconds() > GRACE_PERIOD:
            if fail_trial(study, t, "interrupted: no worker recorded"):
                failed.append(t.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with quiet():
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(set(failed) | (after - before))
