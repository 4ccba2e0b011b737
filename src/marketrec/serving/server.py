"""`marketrec serve`: the app under granian, with one or more worker processes.

Each worker process builds its own `LiveRecommender` from the same model folder and event log
(`worker_app`, the factory granian calls in every worker; the model folder, store URL and
prefix reach it through environment variables, which worker processes inherit). Workers share no
memory: they agree because each tails the one log, so any worker answers with every accepted
event already applied (see `marketrec.online.live`).

This module imports nothing heavy at import time: the parent process only checks the model
folder and the store, then forks the workers, which load the model themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketrec.core.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

ENV_MODEL = "MARKETREC_SERVE_MODEL"
ENV_STORE = "MARKETREC_SERVE_STORE"
ENV_STORE_PREFIX = "MARKETREC_SERVE_STORE_PREFIX"
ENV_EXPERIMENTS = "MARKETREC_SERVE_EXPERIMENTS"
ENV_ROLLOUTS = "MARKETREC_SERVE_ROLLOUTS"
ENV_EXPOSURES = "MARKETREC_SERVE_EXPOSURES"
ENV_MODELS = "MARKETREC_SERVE_MODELS"
ENV_MAX_BATCH = "MARKETREC_SERVE_MAX_BATCH"
ENV_APPLY_LAG_MS = "MARKETREC_SERVE_APPLY_LAG_MS"
ENV_RANK_BUDGET_MS = "MARKETREC_SERVE_RANK_BUDGET_MS"
TARGET = "marketrec.serving.server:worker_app"
#: Model folder manifests: a pipeline's, then a single model's.
_MANIFESTS = ("pipeline.json", "manifest.json")
#: One compute thread per worker: parallelism comes from worker processes, and BLAS or
#: torch pools in every worker would fight over the same cores.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")

_limits: Any = None  # threadpoolctl's limiter, kept alive for the life of the worker


def check_model_folder(model: str | Path) -> Path:
    """The model folder, resolved; a clear `ModelError` when it is not one."""
    path = Path(model)
    if not path.is_dir():
        raise ModelError(f"{path}: model folder not found")
    if not any((path / name).is_file() for name in _MANIFESTS):
        raise ModelError(
            f"{path}: not a model folder (no {' or '.join(_MANIFESTS)}; "
            "create one with `marketrec train`)"
        )
    return path.resolve()


def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    store: str | None = None,
    workers: int = 1,
    max_batch: int | None = None,
    apply_lag_ms: float | None = None,
    rank_budget_ms: float | None = None,
    store_prefix: str | None = None,
    experiments: str | Path | None = None,
    rollouts: str | Path | None = None,
    exposures: str | Path | None = None,
    models: Sequence[str | Path] = (),
) -> None:
    """Serve CONTRACT §6 until interrupted. `exposures`: the folder for experiment exposures
    (default: the Redis store's stream `<prefix>exposures`, else MODEL/state/exposures).
    `store`: event-log URL (default SQLite in
    MODEL/state/events.sqlite; `redis://HOST:PORT/DB`); `store_prefix`: the Redis keys'
    prefix (default `marketrec:`), so several deployments or tests share one database.
    `max_batch`: queued requests a worker answers in one pass (default
    `marketrec.pipeline.config.SERVING_MAX_BATCH`); `apply_lag_ms`: how long other users'
    events may wait before a worker applies them (default `SERVING_APPLY_LAG_MS`);
    `rank_budget_ms`: a request's ranking budget, its wait before its pass included
    (default: the model's own, else `SERVING_RANK_BUDGET_MS`).
    `models`: extra model folders every worker hosts beside MODEL (`--model-version DIR`),
    for the variants and rollouts that name their versions; the folders variants name
    (`model = "DIR"`) are hosted as well."""
    from marketrec.online.live import STATE_FOLDER
    from marketrec.online.log import DEFAULT_REDIS_PREFIX, open_log

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}")
    if apply_lag_ms is not None and not apply_lag_ms >= 0:
        raise ConfigError(f"--apply-lag-ms must be 0 or more, got {apply_lag_ms}")
    if rank_budget_ms is not None and not rank_budget_ms > 0:
        raise ConfigError(f"--rank-budget-ms must be positive, got {rank_budget_ms}")
    if not 0 < port < 65_536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    if store_prefix is not None and not store_prefix:
        raise ConfigError("--store-prefix must not be empty")
    prefix = DEFAULT_REDIS_PREFIX if store_prefix is None else store_prefix
    folder = check_model_folder(model)
    # fail here, once, on a bad URL or an unreachable Redis (and create the SQLite file
    # before several workers race to)
    open_log(store, folder / STATE_FOLDER, prefix=prefix).close()
    os.environ[ENV_MODEL] = str(folder)
    if store is None:
        os.environ.pop(ENV_STORE, None)
    else:
        os.environ[ENV_STORE] = store
    os.environ[ENV_STORE_PREFIX] = prefix
    for name, value in (
        (ENV_MAX_BATCH, max_batch),
        (ENV_APPLY_LAG_MS, apply_lag_ms),
        (ENV_RANK_BUDGET_MS, rank_budget_ms),
    ):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    extra = [check_model_folder(m) for m in models]
    os.environ[ENV_MODELS] = os.pathsep.join(str(m) for m in extra)
    if experiments is None:
        os.environ.pop(ENV_EXPERIMENTS, None)
    else:
        os.environ[ENV_EXPERIMENTS] = str(Path(experiments).resolve())
    if rollouts is None:
        os.environ.pop(ENV_ROLLOUTS, None)
    else:
        os.environ[ENV_ROLLOUTS] = str(Path(rollouts).resolve())
    if experiments is not None or rollouts is not None:
        # a bad file, a missing model folder or a version nobody hosts fails here, once,
        # not in each worker
        _check_experiments(folder, extra, experiments, rollouts)
    if exposures is None:
        os.environ.pop(ENV_EXPOSURES, None)
    else:
        os.environ[ENV_EXPOSURES] = str(Path(exposures).resolve())
    for name in _THREAD_VARS:
        os.environ.setdefault(name, "1")

    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        TARGET,
        address=host,
        port=port,
        workers=workers,
        interface=Interfaces.ASGI,
        factory=True,
        log_access=False,  # the app logs each request itself, with its request id
    ).serve()


def _check_experiments(
    folder: Path, extra: list[Path], experiments: str | Path | None, rollouts: str | Path | None
) -> None:
    """What the workers will check after loading every model, from the manifests only."""
    from marketrec.online.versions import model_version
    from marketrec.serving.app import check_model_variants

    assigner = _assigner(experiments, rollouts)
    hosted = [model_version(folder), *(model_version(m) for m in extra)]
    check_model_variants(assigner.config, hosted, lambda m: model_version(check_model_folder(m)))


def _assigner(experiments: str | Path | None, rollouts: str | Path | None) -> Any:
    """The experiments file and the rollouts state file as the service's `LiveAssigner`."""
    from marketrec.experiments.assignment import ExperimentConfig, load_experiments
    from marketrec.experiments.rollout import LiveAssigner, RolloutStore

    return LiveAssigner(
        load_experiments(experiments) if experiments is not None else ExperimentConfig(),
        RolloutStore(rollouts) if rollouts is not None else None,
    )


def worker_app() -> FastAPI:
    """The app of one worker process (granian's factory): load the model, open the log; the
    app's startup replays the log in the background while `/readyz` answers 503."""
    from marketrec.online.live import LiveRecommender
    from marketrec.online.log import DEFAULT_REDIS_PREFIX
    from marketrec.pipeline.config import SERVING_APPLY_LAG_MS, SERVING_MAX_BATCH
    from marketrec.serving.app import create_app
    from marketrec.serving.logs import configure_service_logging

    single_threaded()
    configure_service_logging()
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise ConfigError(f"{ENV_MODEL} is not set (start the service with `marketrec serve`)")
    live = LiveRecommender.open(
        model,
        os.environ.get(ENV_STORE) or None,
        recover=False,
        prefix=os.environ.get(ENV_STORE_PREFIX) or DEFAULT_REDIS_PREFIX,
        max_batch=int(os.environ.get(ENV_MAX_BATCH) or SERVING_MAX_BATCH),
        apply_lag_s=float(os.environ.get(ENV_APPLY_LAG_MS) or SERVING_APPLY_LAG_MS) / 1000.0,
        rank_budget_ms=float(os.environ.get(ENV_RANK_BUDGET_MS) or 0) or None,
    )
    log.info("worker %d: model %s loaded", os.getpid(), live.version)
    models = [m for m in os.environ.get(ENV_MODELS, "").split(os.pathsep) if m]
    experiments, rollouts = os.environ.get(ENV_EXPERIMENTS), os.environ.get(ENV_ROLLOUTS)
    if not experiments and not rollouts:
        return create_app(live, owns_live=True, models=models)
    from marketrec.experiments.exposures import EXPOSURE_FOLDER, open_exposures
    from marketrec.online.live import STATE_FOLDER

    assigner = _assigner(experiments or None, rollouts or None)
    exposures = open_exposures(
        os.environ.get(ENV_EXPOSURES) or None,
        os.environ.get(ENV_STORE) or None,
        Path(model) / STATE_FOLDER / EXPOSURE_FOLDER,
        prefix=os.environ.get(ENV_STORE_PREFIX) or DEFAULT_REDIS_PREFIX,
    )
    return create_app(
        live, owns_live=True, experiments=assigner, exposures=exposures, models=models
    )


def single_threaded() -> None:
    """One torch and one BLAS thread in this process."""
    global _limits
    from threadpoolctl import threadpool_limits

    _limits = threadpool_limits(limits=1)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; a model may not need it
        return
    torch.set_num_threads(1)
