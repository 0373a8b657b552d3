"""Prometheus ``/metrics`` for aiohttp apps (prometheus-client).

Each process builds its own ``CollectorRegistry`` with a collector that reads its live
counters at scrape time, so the hot paths pay nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)


class FnCollector(Collector):
    """Adapts a function returning metric families into a prometheus collector."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Metric]:
        return list(self.fn())


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    if labels:
        m = CounterMetricFamily(name, doc, labels=list(labels))
        m.add_metric(list(labels.values()), value)
        return m
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    rows: Iterable[tuple[list[str], float]],
) -> Metric:
    m = kind(name, doc, labels=labels)
    for values, v in rows:
        m.add_metric(values, v)
    return m


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_metrics(app: web.Application, fn: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(FnCollector(fn))
    app[REGISTRY_KEY] = registry
    app.router.add_get("/metrics", metrics_view)
    return registry
