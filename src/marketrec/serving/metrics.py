"""The service's Prometheus metrics, one registry per app.

A registry per app (not prometheus-client's global one) so several apps in one process (tests,
two "workers" side by side) do not collide. With several worker processes each serves its own
numbers: a scrape sees the worker that answered it (label the target per worker, or run one
worker per scrape target).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Seconds; dense below 50 ms, where the latency targets are.
_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """What `/metrics` shows; also the `Observer` a `LiveRecommender` reports to."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "marketrec_request_seconds",
            "Time to answer a request, per endpoint (route template), end to end in the app.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "marketrec_stage_seconds",
            "Time per stage of a recommendation: sync (apply the log), retrieve, rank and "
            "finish (rules, diversity, exploration) inside model (the whole recommender), "
            "total (the whole endpoint). sync, model and total count requests; retrieve, "
            "rank and finish count passes of the pipeline, which may answer several queued "
            "requests together (marketrec_batch_requests).",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "marketrec_events_ingested",
            "Events accepted into the event log through this worker.",
            registry=self.registry,
        )
        self.errors = Counter(
            "marketrec_errors",
            "Responses with an error status, by status.",
            ["status"],
            registry=self.registry,
        )
        self.effect_seconds = Histogram(
            "marketrec_event_to_effect_seconds",
            "Time from appending a record to the log to its effect on this worker's state.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "marketrec_model_info",
            "The model versions this worker serves: its own and the extra ones it hosts for "
            "experiments and rollouts (1; 0 for versions it served before).",
            ["version"],
            registry=self.registry,
        )
        self.model_info.labels(version=version).set(1)
        self.exposures_lost = Counter(
            "marketrec_exposures_lost",
            "Experiment exposure lines this worker could not write (disk full, Redis away "
            "longer than its queue lasts); the responses themselves were served.",
            registry=self.registry,
        )
        self.batches = Histogram(
            "marketrec_batch_requests",
            "Requests answered by one pass of the pipeline: those that queued while the "
            "previous pass ran (1 when the worker keeps up).",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=self.registry,
        )
        self.lists = Counter(
            "marketrec_lists_served",
            "Recommendation lists by what served them (served_by: ranker, retrieval, "
            "fallback) and why the usual path was cut (degraded: none, or the step skipped "
            "and its cause, e.g. ranker_skipped:deadline for a pass whose oldest request "
            "had waited its ranking budget).",
            ["served_by", "degraded"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "marketrec_model_swaps",
            "Retrained models swapped in by this worker since it started.",
            registry=self.registry,
        )

    # the Observer protocol of marketrec.online.live
    def stage(self, name: str, seconds: float) -> None:
        self.stages.labels(stage=name).observe(seconds)

    def ingested(self, count: int) -> None:
        self.events.inc(count)

    def effect(self, seconds: float) -> None:
        self.effect_seconds.observe(seconds)

    def swapped(self, old: str, new: str) -> None:
        self.model_info.labels(version=old).set(0)
        self.model_info.labels(version=new).set(1)
        self.swaps.inc()

    def batch(self, requests: int) -> None:
        self.batches.observe(requests)

    def served(self, served_by: str, degraded: Mapping[str, str] | None) -> None:
        # the label keeps each cut step and the first word of its reason ("deadline",
        # "budget", "error"): bounded, where the reasons themselves carry numbers
        cause = (
            ",".join(f"{step}:{reason.split(':', 1)[0]}" for step, reason in degraded.items())
            if degraded
            else "none"
        )
        self.lists.labels(served_by=served_by, degraded=cause).inc()

    def hosting(self, versions: list[str]) -> None:
        """Every hosted version is served (1)."""
        for version in versions:
            self.model_info.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
