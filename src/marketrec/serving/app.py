"""The HTTP API of CONTRACT §6 over one worker's `LiveRecommender`.

Endpoints that touch the model are plain `def`: FastAPI runs them in its thread pool, so a
recommendation's CPU work never blocks the event loop that accepts the other connections
(an `async def` doing the same work would serialise every request behind it). Only the
trivial probes are `async`.

Every error is JSON `{"error": "..."}`: bad input is 400 (404 for an unknown item or path),
a state still being recovered or an event log that failed is 503 (retry), and only a bug is
500. Each request gets a request id (uuid4 hex), returned in the `x-request-id` header and in
the recommendation body, and logged with the request in one line (`record.fields`; the
server's `serving.logs.JsonFormatter` writes them as one JSON object).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from marketrec import __version__
from marketrec.core.errors import ConfigError, MarketrecError, RecordError
from marketrec.experiments.assignment import (
    Assigner,
    Assignment,
    ExperimentConfig,
    RequestContext,
    model_variants,
)
from marketrec.experiments.exposures import ExposureLog, RedisExposureLog
from marketrec.experiments.rollout import LiveAssigner, RolloutStore
from marketrec.online.hosting import HostedVersions
from marketrec.online.live import LiveRecommender, NotReadyError, UnknownItemError
from marketrec.online.log import EventLogError
from marketrec.online.records import EventIn, ItemUpdate, UserUpdate
from marketrec.serving.metrics import CONTENT_TYPE, ServiceMetrics

log = logging.getLogger("marketrec.requests")

MAX_K = 1000
MAX_HISTORY = 1000
_ID = {"min_length": 1, "max_length": 512}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


# --------------------------------------------------------------------------- response bodies
class RecommendedItem(BaseModel):
    item_id: str
    score: float
    source: str = Field(description="what put the item there: retrieval, fallback, exploration")


class ExperimentVariant(BaseModel):
    experiment: str
    variant: str


class Recommendations(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    request_id: str
    served_by: str = Field(
        description="what ordered the list: ranker (retrieval's candidates re-ranked), "
        "retrieval (retrieval order: the model has no active ranker, or it was skipped), "
        "fallback (the popularity of the user's region: a user the retrieval model cannot "
        "embed, or retrieval failed)"
    )
    degraded: dict[str, str] | None = Field(
        default=None,
        description="why the usual path was cut, by step: ranker_skipped (deadline: the "
        "pass's oldest request had waited its ranking budget, the worker is behind; budget: "
        "the pass spent it before ranking; error), retrieval_failed; null when it was not",
    )
    experiments: list[ExperimentVariant] | None = Field(
        default=None,
        description="the A/B variants this response was served under (only when the service "
        "runs experiments: CONTRACT §6's body is unchanged otherwise)",
    )


class Accepted(BaseModel):
    accepted: int = Field(description="events durably in the event log")


class History(BaseModel):
    user_id: str
    events: list[dict[str, Any]] = Field(
        description="the user's online events as logged (ts in epoch seconds), newest first"
    )


class ItemState(BaseModel):
    item_id: str
    known: bool = Field(description="always true: an unknown id is a 404")
    recommendable: bool = Field(
        description="has a model column, is sellable somewhere, is placed by the retrieval "
        "model (the two-tower places products listed live by content; other models only "
        "the items they were trained with) and is listed by the model's clock"
    )
    sellable_regions: list[str] | None = Field(
        description="the regions where it may be shown; null: everywhere"
    )
    listed_live: bool = Field(description="first listed through the API, after training")


class Written(BaseModel):
    id: str
    offset: int = Field(description="the event-log offset of the write")


class ErrorBody(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid input"},
    503: {"model": ErrorBody, "description": "not ready yet, or the event log failed: retry"},
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI request body for endpoints that validate the raw JSON themselves (so the
    error names the event index and field the way `marketrec.online.records` words it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_EVENT_SCHEMA = EventIn.model_json_schema()
_EVENTS_BODY = _json_body({"anyOf": [_EVENT_SCHEMA, {"type": "array", "items": _EVENT_SCHEMA}]})


# --------------------------------------------------------------------------- the app
def create_app(
    live: LiveRecommender,
    *,
    owns_live: bool = False,
    experiments: Assigner | LiveAssigner | None = None,
    exposures: ExposureLog | RedisExposureLog | None = None,
    models: Sequence[str | os.PathLike[str]] = (),
) -> FastAPI:
    """The FastAPI app serving `live`. If `live` is not recovered yet, startup replays the
    log in a background thread (`/readyz` answers 503 until it is done, `/healthz` 200 all
    along). `owns_live`: close its event log at shutdown. `experiments`: assign each
    recommendation request to its A/B variants, serve it with their settings, and write
    an exposure line per variant to `exposures` (lines it cannot write are counted in
    `marketrec_exposures_lost`, never failing the request). `models`: extra model folders to host
    beside `live` over its event log (`serve --model-version DIR`); the folders that
    variants name (`model = "DIR"`) are hosted too, and a variant's requests are answered
    by the version it names (`marketrec.online.hosting`)."""
    metrics = ServiceMetrics(live.version)
    live.observer = metrics
    if exposures is not None:
        exposures.on_lost = metrics.exposures_lost.inc
    hosts = HostedVersions(live)
    for folder in models:
        hosts.add(folder)
    if experiments is not None:
        check_model_variants(experiments.config, hosts.versions, lambda f: hosts.add(f).version)
    seen = [experiments.config if experiments is not None else None]

    def host_new_models() -> None:
        """A rollout started while the service runs may name a model folder: start
        loading it as soon as the state file names it (checked by `/readyz`, which
        orchestrators poll; a request of its variant starts the load too, through
        `HostedVersions.find`), not on every request."""
        if experiments is None or experiments.config is seen[0]:
            return
        seen[0] = experiments.config
        for _, _, settings in model_variants(seen[0]):
            hosts.find(settings.model_version, settings.model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not hosts.ready:
            threading.Thread(target=_recover, args=(hosts,), name="recover", daemon=True).start()
        yield
        if owns_live:
            hosts.close()
        if exposures is not None:
            exposures.close()

    app = FastAPI(
        title="marketrec",
        version=__version__,
        summary="Real-time two-stage recommendations (CONTRACT §6)",
        lifespan=lifespan,
    )
    app.state.live = live
    app.state.hosts = hosts
    app.state.metrics = metrics
    _add_error_handlers(app)
    app.add_middleware(_RequestLog, metrics=metrics)  # type: ignore[arg-type]

    @app.get("/v1/recommendations", response_model=Recommendations, responses=_ERRORS)
    async def recommendations(
        request: Request,
        user_id: Annotated[str, Query(**_ID)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        region: Annotated[str | None, Query(max_length=512)] = None,
        device: Annotated[
            str | None,
            Query(
                max_length=512,
                description="the request's device (the user tower's device input; without "
                "it, the device of the user's last event)",
            ),
        ] = None,
    ) -> Response:
        """Top k for a user; unknown users are valid (cold start). Without experiments the
        list is computed by a pass on this event loop (`LiveRecommender.recommend_async`,
        which batches the requests that queue meanwhile); with them, in the thread pool
        (assignment reads the user's state under the worker's lock)."""
        started = time.perf_counter()
        received = received_at(request.headers.get(REQUEST_START_HEADER), started, time.time())
        if experiments is None:
            body = await live.recommend_async(
                user_id, k, region, device, request_id=_request_id(request), received_at=received
            )
        else:
            body = await run_in_threadpool(
                with_experiments, request, user_id, k, region, device, received
            )
        metrics.stage("total", time.perf_counter() - started)
        # the body is built to the schema (`_Request.body`: strings and finite floats), so it
        # is written as it is: validating it against `Recommendations` and encoding it through
        # pydantic cost about 10 % of a small model's served request (measured side by side,
        # server CPU per request); `response_model` documents it
        return Response(json.dumps(body).encode(), media_type="application/json")

    def with_experiments(
        request: Request,
        user_id: str,
        k: int,
        region: str | None,
        device: str | None,
        received: float,
    ) -> dict[str, Any]:
        """`recommendations` under the experiments' assignment (a pool thread)."""
        assert experiments is not None
        known, home = live.user_context(user_id)
        context = RequestContext(
            user_id=user_id, region=region or home, device=device, is_new_user=not known
        )
        assignments, serving = _hosted(experiments.assign(context), hosts)
        settings = experiments.settings(assignments).model_dump(exclude_none=True)
        body = serving.recommend(
            user_id,
            k,
            region,
            device,
            request_id=_request_id(request),
            settings=settings,
            received_at=received,
        )
        body["experiments"] = [
            {"experiment": a.experiment, "variant": a.variant} for a in assignments
        ]
        if exposures is not None and assignments:
            shown = [item["item_id"] for item in body["items"]]
            exposures.record(
                body["request_id"], user_id, assignments, shown, region, body["model_version"]
            )
        return body

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=Accepted,
        responses=_ERRORS,
        openapi_extra=_EVENTS_BODY,
    )
    def post_events(payload: Annotated[Any, Body()]) -> dict[str, int]:
        """One event (CONTRACT §5) or a list; 202 once durably logged. A batch with an invalid
        event is rejected whole, naming the event's index and field."""
        return {"accepted": live.ingest(_decoded(payload))}

    @app.get("/v1/users/{user_id}/history", response_model=History, responses=_ERRORS)
    def history(
        user_id: Annotated[str, Path(**_ID)],
        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 50,
    ) -> dict[str, Any]:
        """The user's most recent online events, newest first."""
        return {"user_id": user_id, "events": live.history(user_id, limit)}

    @app.get(
        "/v1/items/{item_id}",
        response_model=ItemState,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "unknown item"}},
    )
    def get_item(item_id: Annotated[str, Path(**_ID)]) -> dict[str, Any]:
        """What this worker knows about an item, with every logged write applied."""
        return live.item(item_id)

    @app.put(
        "/v1/items/{item_id}",
        response_model=Written,
        responses=_ERRORS,
        openapi_extra=_json_body(ItemUpdate.model_json_schema()),
    )
    def put_item(
        item_id: Annotated[str, Path(**_ID)], payload: Annotated[Any, Body()]
    ) -> dict[str, Any]:
        """Create or replace a catalogue entry (CONTRACT §1 item fields)."""
        return {"id": item_id, "offset": live.put_item(item_id, _decoded(payload))}

    @app.delete(
        "/v1/items/{item_id}",
        response_model=Written,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "unknown item"}},
    )
    def delete_item(item_id: Annotated[str, Path(**_ID)]) -> dict[str, Any]:
        """Delist an item: never recommended again."""
        return {"id": item_id, "offset": live.delete_item(item_id)}

    if isinstance(experiments, LiveAssigner) and experiments.rollouts is not None:
        _add_rollout_routes(app, experiments.rollouts)

    @app.put(
        "/v1/users/{user_id}",
        response_model=Written,
        responses=_ERRORS,
        openapi_extra=_json_body(UserUpdate.model_json_schema()),
    )
    def put_user(
        user_id: Annotated[str, Path(**_ID)], payload: Annotated[Any, Body()]
    ) -> dict[str, Any]:
        """Set a user's region, sign-up time and attributes."""
        return {"id": user_id, "offset": live.put_user(user_id, _decoded(payload))}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """200 while the process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorBody, "description": "not ready"}})
    async def readyz() -> Any:
        """200 once every hosted model version is loaded and the event log replayed into
        it; `model_version`: the primary's; `versions`: every hosted version (`primary`,
        `ready`, `offset`, `folder`; a folder a later rollout named is listed `loading`
        meanwhile, or with its `error`); `swapping`: a retrained model named in the log is
        being loaded (the current one serves meanwhile); `swap_error`: why the last swap
        failed, if it did."""
        host_new_models()
        if not hosts.ready:
            problem = hosts.recovery_error or "replaying the event log"
            waiting = ", ".join(v.version for v in hosts.all() if not v.ready)
            return _error(503, f"not ready: {problem} (model versions not ready: {waiting})")
        return {
            "status": "ready",
            "model_version": live.version,
            "offset": live.offset,
            "swapping": live.swapping,
            "swap_error": live.swap_error,
            "rank_budget_ms": _rank_budget(live),
            "versions": hosts.describe(),
        }

    @app.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        """Prometheus text format."""
        metrics.hosting(hosts.versions)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def check_model_variants(
    config: ExperimentConfig, hosted: Sequence[str], host: Callable[[str], str]
) -> None:
    """Every variant that names a model can be served (fail at start, not per request):
    `host(folder)` hosts a variant's `model` folder and returns its version (raising
    `ConfigError` when it cannot); a variant's `model_version` must then be that folder's
    version, or, without a folder, one of the `hosted` versions or of the folders."""
    named = model_variants(config)
    versions = list(hosted)
    for experiment, variant, settings in named:
        if settings.model is None:
            continue
        where = f"experiment '{experiment}', variant '{variant}'"
        try:
            version = host(settings.model)
        except MarketrecError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if settings.model_version is not None and settings.model_version != version:
            raise ConfigError(
                f"{where} wants model version '{settings.model_version}' but its folder "
                f"{settings.model} holds '{version}'"
            )
        versions.append(version)
    for experiment, variant, settings in named:
        wanted = settings.model_version
        if settings.model is None and wanted is not None and wanted not in versions:
            raise ConfigError(
                f"experiment '{experiment}', variant '{variant}' wants model version "
                f"'{wanted}', which this service does not host (it hosts "
                f"{', '.join(repr(v) for v in dict.fromkeys(versions))}): name the folder "
                'that holds it in the variant (`model = "DIR"`) or serve it with '
                "`--model-version DIR`"
            )


def _hosted(
    assignments: list[Assignment], hosts: HostedVersions
) -> tuple[list[Assignment], LiveRecommender]:
    """The assignments this service can honour and the hosted version that answers them.
    An assignment whose model is not hosted (yet: a rollout started while the service runs
    names a folder that is still loading) is left out, as if the user were outside it."""
    kept, serving = [], hosts.primary
    for assignment in assignments:
        settings = assignment.settings
        if settings.model is None and settings.model_version is None:
            kept.append(assignment)
            continue
        found = hosts.find(settings.model_version, settings.model)
        if found is not None:
            kept.append(assignment)
            serving = found
    return kept, serving


def _recover(hosts: HostedVersions) -> None:
    try:
        hosts.recover()
    except Exception:  # recovery_error says what; readyz reports it
        logging.getLogger(__name__).exception("recovering the online state failed")


def _decoded(payload: Any) -> Any:
    """FastAPI decodes JSON bodies sent as `application/json`; one sent without that
    content type arrives as bytes: decode it the same way (JSON is JSON)."""
    if not isinstance(payload, bytes | bytearray):
        return payload
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError("body", f"invalid JSON ({exc})") from None


#: the header a front proxy stamps with the moment it received the request (nginx:
#: `proxy_set_header X-Request-Start "t=${msec}"`): a worker's event loop reads a request
#: only once its current pass is done, so without it the wait before that is not seen
REQUEST_START_HEADER = "x-request-start"
#: a stamp further back than this is taken for a skewed clock and ignored
_MAX_PROXY_WAIT_S = 60.0


def received_at(stamp: str | None, now: float, wall: float) -> float:
    """When the request reached the service, on the `time.perf_counter` clock whose value
    is `now` at the wall-clock time `wall`: the `X-Request-Start` stamp (epoch seconds,
    milliseconds or microseconds, optionally after "t="), else `now`. An unreadable
    stamp, one in the future or one more than a minute old is ignored: it only moves a
    deadline, so a proxy's bad clock must not cut every list short."""
    if not stamp:
        return now
    try:
        value = float(stamp.strip().removeprefix("t="))
    except ValueError:
        return now
    if value > 1e14:  # microseconds
        value /= 1e6
    elif value > 1e11:  # milliseconds
        value /= 1e3
    waited = wall - value
    return now - waited if 0.0 <= waited <= _MAX_PROXY_WAIT_S else now


def _rank_budget(live: LiveRecommender) -> float | None:
    """The ranking budget this worker's model is served with (`/readyz`); None for a
    single-stage model, which has no pipeline settings."""
    config = getattr(live.model, "config", None)
    return None if config is None else config.rank_budget_ms


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", None) or uuid.uuid4().hex)


# --------------------------------------------------------------------------- errors
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    percent: float | None = Field(default=None, gt=0, le=100)
    regions: list[str] = Field(default_factory=list)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="manual (admin endpoint)", max_length=500)


def _add_rollout_routes(app: FastAPI, store: RolloutStore) -> None:
    """The admin endpoints of staged rollouts (the same operations as `marketrec rollout`;
    no authentication of their own: keep /admin behind the deployment's access control)."""

    @app.get("/admin/rollouts", responses=_ERRORS)
    def rollouts() -> dict[str, Any]:
        """Every rollout with its stage and history."""
        return {name: r.model_dump(mode="json") for name, r in store.load().items()}

    @app.post("/admin/rollouts/{name}/promote", responses=_ERRORS)
    def promote(name: Annotated[str, Path(**_ID)], body: PromoteBody) -> dict[str, Any]:
        """To the next stage or up the current one's ramp."""
        return store.promote(name, body.percent, tuple(body.regions)).model_dump(mode="json")

    @app.post("/admin/rollouts/{name}/rollback", responses=_ERRORS)
    def rollback(name: Annotated[str, Path(**_ID)], body: RollbackBody) -> dict[str, Any]:
        """Stop the rollout: nobody gets the new settings from the next request on."""
        return store.rollback(name, body.reason).model_dump(mode="json")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, validation_message(exc.errors()))

    @app.exception_handler(UnknownItemError)
    async def unknown_item(request: Request, exc: UnknownItemError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(MarketrecError)
    async def bad_input(request: Request, exc: MarketrecError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(EventLogError)
    async def log_failed(request: Request, exc: EventLogError) -> JSONResponse:
        return _error(503, f"event log unavailable, nothing was recorded: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )


_PLACES = {"query": "query parameter", "path": "path parameter", "body": "body"}


def validation_message(errors: Any) -> str:
    """FastAPI's validation errors as one line naming each parameter and its problem,
    e.g. "query parameter 'k': must be ≥ 1"."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        place = _PLACES.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:])
        kind = error.get("type", "")
        if kind == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            parts.append(f"body: invalid JSON{f' ({detail})' if detail else ''}")
            continue
        if kind == "missing":
            problem = "required"
        elif kind == "greater_than_equal":
            problem = f"must be ≥ {error['ctx']['ge']}"
        elif kind == "less_than_equal":
            problem = f"must be ≤ {error['ctx']['le']}"
        elif kind == "int_parsing":
            problem = "must be an integer"
        else:
            msg = str(error.get("msg", "invalid"))
            problem = msg[:1].lower() + msg[1:]
        where = f"{place} '{name}'" if name and place != "body" else place
        if place == "body" and name:
            where = f"body field '{name}'"
        parts.append(f"{where}: {problem}")
    return "; ".join(parts) or "invalid request"


# --------------------------------------------------------------------------- request log
class _RequestLog:
    """Pure ASGI middleware (no per-request task, unlike `BaseHTTPMiddleware`): a request id
    per request, the latency histogram per route template, errors by status, one JSON log
    line per request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope["state"] = {**scope.get("state", {}), "request_id": request_id}
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        started_response = False

        async def send_tracked(message: Message) -> None:
            nonlocal started_response
            started_response = started_response or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception:
            # a bug, not bad input: log it once with the request id and answer JSON here,
            # so neither Starlette's plain-text 500 nor the server's own traceback follows
            status = 500
            log.exception("internal error", extra={"fields": {"request_id": request_id}})
            if not started_response:
                body = json.dumps({"error": f"internal error (request id {request_id})"})
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body.encode()})
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint=endpoint).observe(seconds)
            if status >= 400:
                self.metrics.errors.labels(status=str(status)).inc()
            if log.isEnabledFor(logging.INFO):
                fields = {
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "endpoint": endpoint,
                    "status": status,
                    "ms": round(seconds * 1000.0, 3),
                }
                log.info("request", extra={"fields": fields})
