"""Where studies live: storage URLs, opening a storage, and creating or reopening a study
that remembers the setup it tunes.

Storage is any SQLAlchemy URL (an SQLite file by default, PostgreSQL for several workers on
one or many machines), opened with Optuna heartbeats (:mod:`tuning.worker_liveness`). A
study records its setup (a self-contained config snapshot, its fingerprint, the objective and
the search space) as the user attribute :data:`META_KEY`, so rerunning the same command
continues it and a different setup is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from jaxsched.errors import JaxschedError
from tuning.optuna_logs import quiet
from tuning.worker_liveness import GRACE_PERIOD, HEARTBEAT_INTERVAL, enqueue_baseline, \
    requeue_baseline

if TYPE_CHECKING:  # the job (and JAX) only for the annotation: opening storage stays light
    from tuning.tune_job import TuneJob

__all__ = [
    "DEFAULT_STORAGE",
    "META_KEY",
    "storage_url",
    "redact_url",
    "open_storage",
    "is_storage",
    "study_meta",
    "load_study",
    "open_study",
]

DEFAULT_STORAGE = "sqlite:///jaxsched-tune.db"
"""Storage when neither ``--storage`` nor ``tune.storage`` is given: an SQLite file in the
working directory."""

META_KEY = "jaxsched"
"""Study user attribute holding the tuned setup."""

META_WAIT = 15.0
"""Seconds a worker waits for the worker that created a study to record its setup."""


def storage_url(url: str | None) -> str:
    """Normalize a storage argument: None gives :data:`DEFAULT_STORAGE`; a bare path is an
    SQLite file; ``postgresql://`` uses psycopg 3 when psycopg2 is not installed."""
    if not url:
        return DEFAULT_STORAGE
    if "://" not in url:
        return f"sqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        try:
            import psycopg2  # noqa: F401
            return f"postgresql://{rest}"
        except ImportError:
            return f"postgresql+psycopg://{rest}"
    return url


def redact_url(url: str) -> str:
    """The URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str | None):
    """An Optuna RDB storage with heartbeats (:data:`HEARTBEAT_INTERVAL`, :data:`GRACE_PERIOD`)."""
    url = storage_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).parent.exists():
            raise JaxschedError(f"--storage {url}: folder {Path(path).parent} does not exist")
    else:
        kwargs["pool_pre_ping"] = True
    try:
        for attempt in range(3):
            try:
                with quiet():
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                      heartbeat_interval=HEARTBEAT_INTERVAL,
                                                      grace_period=GRACE_PERIOD,
                                                      failed_trial_callback=requeue_baseline)
            except Exception as err:  # workers creating a new database's tables at once
                if attempt == 2 or not isinstance(err, (IntegrityError, OperationalError)) \
                        or "constraint" not in str(err) and "already exists" not in str(err):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as err:
        raise JaxschedError(f"--storage {redact_url(url)}: missing database driver: {err}") from None
    except Exception as err:  # sqlalchemy errors: bad URL, unreachable server, auth
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JaxschedError(f"--storage {redact_url(url)}: cannot open: {msg}") from None


def is_storage(obj) -> bool:
    """Whether ``obj`` is an opened Optuna storage (rather than a URL)."""
    return isinstance(obj, optuna.storages.BaseStorage)


def study_meta(study) -> dict | None:
    """The setup the study tunes (see module), or None if jaxsched did not create it."""
    return study.user_attrs.get(META_KEY)


def load_study(storage, name: str, sampler=None):
    """An existing study (one-line error naming the study and storage if absent)."""
    try:
        with quiet():
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)] if storage else []
        known = f"; studies there: {', '.join(names)}" if names else "; the storage has no study"
        raise JaxschedError(f"--study {name!r}: no such study in "
                            f"{redact_url(storage.url) if hasattr(storage, 'url') else 'the storage'}"
                            f"{known}") from None


def open_study(job: TuneJob, storage, name: str, sampler, baseline: bool = False):
    """Create the study (exactly one worker succeeds: it enqueues the baseline trial when
    ``baseline``, then records the setup) or open it (waiting up to :data:`META_WAIT` s for
    its creator's setup)."""
    with quiet():
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        directions=list(job.objective.directions))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
            created = False
    meta = study_meta(study)
    deadline = time.monotonic() + (0 if created else META_WAIT)
    while meta is None and time.monotonic() < deadline:
        time.sleep(0.1)
        meta = study_meta(study)
    if meta is None:
        if study.trials:
            raise JaxschedError(
                f"--study {name!r}: exists in {redact_url(storage.url)} but was not created by "
                "jaxsched tune; use another --study"
            )
        if baseline:
            enqueue_baseline(study, job.space.default_point())
        study.set_user_attr(META_KEY, job.meta())
        meta = study_meta(study)
    if meta.get("fingerprint") != job.fingerprint:
        raise JaxschedError(
            f"--study {name!r}: was created for another setup (config {meta.get('source')!r}, "
            f"policy {meta.get('config', {}).get('policy', {}).get('name')!r}); the config, "
            "[tune] objective or search space differ: use another --study"
        )
    if [d.name.lower() for d in study.directions] != list(job.objective.directions):
        raise JaxschedError(f"--study {name!r}: its directions differ from the objective's")
    return study
