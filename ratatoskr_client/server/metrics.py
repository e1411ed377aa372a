"""``GET /metrics``: the relay's state and traffic in the Prometheus text format.

Nothing here runs on the relay's hot paths: the core and the sockets bump
plain counters (:class:`~.counters.RelayCounters`), and :class:`RelayCollector`
reads them, with the core's table sizes and the cluster link's state, when the
endpoint is scraped. Each application has its own ``CollectorRegistry`` (never
the process-wide default), so several relays in one process do not clash.

Needs the ``prometheus-client`` package (the ``metrics`` and ``cluster``
extras); without it the endpoint answers 501 saying what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .core import RelayCore
from .counters import REFUSAL_REASONS

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .cluster import Cluster

__all__ = ["MISSING_METRICS", "RelayCollector", "metrics_registry"]

#: The answer of ``/metrics`` without prometheus-client.
MISSING_METRICS: Final = (
    '/metrics needs the prometheus-client package: pip install "ratatoskr-client[metrics]"\n'
)


class RelayCollector:
    """Reads one relay's numbers at scrape time (a prometheus-client collector)."""

    def __init__(self, core: RelayCore, cluster: Cluster | None = None) -> None:
        self.core = core
        self.cluster = cluster

    def collect(self) -> Iterator[Any]:
        """Yield every metric family (called by prometheus-client on a scrape)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self.core.stats()
        counters = self.core.counters
        for name, value, text in (
            ("connections", stats.connections, "Open WebSockets, authenticated or not."),
            ("peers", stats.peers, "Authenticated connections to this relay."),
            ("documents", stats.documents, "Documents with a peer of this relay present."),
            ("memberships", stats.memberships, "Peer-in-document pairs on this relay."),
            ("gossip_sessions", stats.gossip_sessions, "Ephemeral sessionIds being tracked."),
        ):
            yield GaugeMetricFamily(f"ratatoskr_{name}", text, value=value)
        received = CounterMetricFamily(
            "ratatoskr_frames_received", "Frames received from peers, by type.", labels=["type"]
        )
        for kind, n in sorted(counters.frames_in.items()):
            received.add_metric([kind], n)
        yield received
        sent = CounterMetricFamily(
            "ratatoskr_frames_sent", "Frames written to peers, by type.", labels=["type"]
        )
        for kind, n in sorted(counters.frames_sent().items()):
            sent.add_metric([kind], n)
        yield sent
        relayed = CounterMetricFamily(
            "ratatoskr_messages_relayed",
            "Ephemeral messages relayed: accepted from a peer of this relay (local) or "
            "delivered here from a peer of another relay (remote).",
            labels=["origin"],
        )
        relayed.add_metric(["local"], counters.relayed_local)
        relayed.add_metric(["remote"], counters.relayed_remote)
        yield relayed
        refused = CounterMetricFamily(
            "ratatoskr_refused",
            "Frames refused with an error frame, by reason.",
            labels=["reason"],
        )
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], counters.refused.get(reason, 0))
        yield refused
        yield CounterMetricFamily(
            "ratatoskr_slow_reader_messages_dropped",
            "Ephemeral messages not sent because the receiving peer was too far behind.",
            value=counters.ephemeral_dropped,
        )
        yield CounterMetricFamily(
            "ratatoskr_slow_readers_disconnected",
            "Connections dropped because their peer stopped reading.",
            value=counters.slow_disconnects,
        )
        yield CounterMetricFamily(
            "ratatoskr_refused_unanswered",
            "Frames refused by a rate limit and dropped without an answer: the "
            "connection had been told rate_limited and its retryAfter had not passed.",
            value=counters.unanswered,
        )
        yield CounterMetricFamily(
            "ratatoskr_flooders_disconnected",
            "Connections closed for sending too much after being told rate_limited.",
            value=counters.flood_disconnects,
        )
        yield CounterMetricFamily(
            "ratatoskr_unresponsive_disconnected",
            "Connections closed because no complete frame (nor pong) arrived within "
            "1.5 x ping_interval.",
            value=counters.unresponsive_disconnects,
        )
        if self.cluster is not None:
            yield from self._cluster(GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily)

    def _cluster(self, gauge: Any, counter: Any, histogram: Any) -> Iterator[Any]:
        cluster = self.cluster
        assert cluster is not None
        link, view = cluster.link, cluster.view
        stats = view.stats()
        yield gauge("ratatoskr_redis_up", "1 while the Redis link is up.", value=int(link.up))
        yield counter(
            "ratatoskr_redis_reconnects",
            "Times the Redis link came back after being lost.",
            value=link.reconnects,
        )
        trips = histogram(
            "ratatoskr_redis_round_trip_seconds",
            "Round trip of the heartbeat command to Redis.",
        )
        trips.add_metric([], buckets=link.round_trips.cumulative(), sum_value=link.round_trips.sum)
        yield trips
        yield gauge(
            "ratatoskr_cluster_nodes", "Relays in the cluster, this one included.", stats.nodes + 1
        )
        yield gauge(
            "ratatoskr_cluster_remote_peers",
            "Peers connected to the other relays.",
            stats.remote_peers,
        )
        yield gauge(
            "ratatoskr_cluster_remote_memberships",
            "Peers of other relays present in the documents this relay has peers in.",
            stats.remote_memberships,
        )
        yield gauge(
            "ratatoskr_cluster_subscriptions",
            "Document channels this relay subscribes to (documents with a local peer).",
            stats.documents,
        )
        bus = counter(
            "ratatoskr_cluster_messages",
            "Messages over Redis: published by this relay, received from the others, "
            "malformed ones ignored, and ephemeral messages not published (link down "
            "or queue full).",
            labels=["direction"],
        )
        bus.add_metric(["published"], link.published)
        bus.add_metric(["received"], link.received)
        bus.add_metric(["malformed"], link.malformed)
        bus.add_metric(["unpublished"], view.unpublished)
        yield bus


def metrics_registry(core: RelayCore, cluster: Cluster | None = None) -> CollectorRegistry | None:
    """A fresh registry with the relay's collector and the process's own
    metrics (memory, CPU, file descriptors), or None without prometheus-client."""
    try:
        prometheus = importlib.import_module("prometheus_client")
    except ImportError:
        return None
    registry: CollectorRegistry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(core, cluster))
    prometheus.ProcessCollector(registry=registry)
    return registry


async def serve_metrics(registry: CollectorRegistry | None) -> web.Response:
    """The ``/metrics`` response for ``registry``."""
    if registry is None:
        return web.Response(status=501, text=MISSING_METRICS)
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
