"""``GET /metrics``: the relay's state and traffic in the Prometheus text format.

Nothing here runs on the relay's hot paths: the core and the sockets bump
plain counters (:class:`~.counters.RelayCounters`), and :class:`RelayCollector`
reads them, with the core's table sizes and the cluster link's state, when the
endpoint is scraped. Each application has its own ``CollectorRegistry`` (never
the process-wide default), so several relays in one process do not clash.

Needs the ``prometheus-client`` package (the ``metrics`` and ``cluster``
extras); without it the endpoint answers 501 saying what to install.

A scrape costs the relay about a millisecond of CPU (the process metrics read
``/proc``, and list every open file descriptor), so :class:`MetricsPage`
renders the page at most once per :data:`MAX_AGE` seconds and serves the
same bytes in between: the cost is bounded whatever the scrape rate. With a
``metrics_token`` the page needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from ..._version import install_hint
from ..core.counters import REFUSAL_REASONS, RESUME_OUTCOMES
from ..core.relay import RelayCore
from ..core.webhooks import WebhookStats

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..cluster import Cluster

__all__ = ["MAX_AGE", "MISSING_METRICS", "MetricsPage", "RelayCollector", "metrics_registry"]

#: Seconds a rendered page is served again before it is rendered anew.
MAX_AGE = 1.0
#: The answer of ``/metrics`` without prometheus-client.
MISSING_METRICS: Final = (
    f"/metrics needs the prometheus-client package: {install_hint('metrics')}\n"
)


class RelayCollector:
    """Reads one relay's numbers at scrape time (a prometheus-client collector)."""

    def __init__(
        self,
        core: RelayCore,
        cluster: Cluster | None = None,
        webhooks: WebhookStats | None = None,
    ) -> None:
        self.core = core
        self.cluster = cluster
        self.webhooks = webhooks

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
        yield _labelled(
            CounterMetricFamily,
            "ratatoskr_frames_received",
            "Frames received from peers, by type.",
            "type",
            sorted(counters.frames_in.items()),
        )
        yield _labelled(
            CounterMetricFamily,
            "ratatoskr_frames_sent",
            "Frames written to peers, by type.",
            "type",
            sorted(counters.frames_sent().items()),
        )
        yield _labelled(
            CounterMetricFamily,
            "ratatoskr_messages_relayed",
            "Ephemeral messages relayed: accepted from a peer of this relay (local) or "
            "delivered here from a peer of another relay (remote).",
            "origin",
            [("local", counters.relayed_local), ("remote", counters.relayed_remote)],
        )
        yield _labelled(
            CounterMetricFamily,
            "ratatoskr_refused",
            "Frames (and connections) refused with an error frame, by reason.",
            "reason",
            [(reason, counters.refused.get(reason, 0)) for reason in REFUSAL_REASONS],
        )
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
        yield _labelled(
            CounterMetricFamily,
            "ratatoskr_resumes",
            "Peers resumed after a drop, by outcome: here (held by this relay), adopted "
            "(handed over by another relay), handed_over (given to another relay), "
            "refused / timed_out (the holder said no / did not answer: a new peer), late "
            "(a handover after the timeout: the peer left).",
            "outcome",
            [(outcome, counters.resumes.get(outcome, 0)) for outcome in RESUME_OUTCOMES],
        )
        yield CounterMetricFamily(
            "ratatoskr_internal_errors",
            "Frames the relay failed on (a bug of its own): each answered with "
            "internal_error and dropped, the connection kept.",
            value=counters.internal_errors,
        )
        if self.cluster is not None:
            yield from self._cluster(GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily)
        if self.webhooks is not None:
            yield from self._webhooks(GaugeMetricFamily, CounterMetricFamily)

    def _webhooks(self, gauge: Any, counter: Any) -> Iterator[Any]:
        hooks = self.webhooks
        assert hooks is not None
        yield gauge(
            "ratatoskr_webhook_queued_events",
            "Webhook events waiting to be sent (bounded: beyond it they are dropped).",
            value=hooks.queued,
        )
        yield _labelled(
            counter,
            "ratatoskr_webhook_events_dropped",
            "Webhook events dropped: the queue was full, or their batch failed every attempt.",
            "reason",
            hooks.dropped.items(),
        )
        yield _labelled(
            counter,
            "ratatoskr_webhook_deliveries",
            "Webhook POSTs by outcome (ok: a 2xx answer; error: anything else, retried).",
            "outcome",
            hooks.deliveries.items(),
        )
        yield counter(
            "ratatoskr_webhook_events_delivered",
            "Webhook events a receiver acknowledged.",
            value=hooks.delivered,
        )

    def _cluster(self, gauge: Any, counter: Any, histogram: Any) -> Iterator[Any]:
        cluster = self.cluster
        assert cluster is not None
        link, view = cluster.link, cluster.view
        stats = view.stats()
        yield gauge(
            "ratatoskr_redis_up", "1 while the Redis link is up.", value=int(cluster.redis_up)
        )
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
        yield _labelled(
            counter,
            "ratatoskr_cluster_messages",
            "Messages over Redis: published by this relay, received from the others, "
            "malformed ones ignored, and ephemeral messages not published (link down "
            "or queue full).",
            "direction",
            [
                ("published", link.published),
                ("received", link.received),
                ("malformed", link.malformed),
                ("unpublished", view.unpublished),
            ],
        )


def _labelled(
    family: Any, name: str, text: str, label: str, samples: Iterable[tuple[str, float]]
) -> Any:
    """A metric ``family`` with one label: a sample per (label value, value)."""
    metric = family(name, text, labels=[label])
    for key, value in samples:
        metric.add_metric([key], value)
    return metric


def metrics_registry(
    core: RelayCore, cluster: Cluster | None = None, webhooks: WebhookStats | None = None
) -> CollectorRegistry | None:
    """A fresh registry with the relay's collector and the process's own
    metrics (memory, CPU, file descriptors), or None without prometheus-client."""
    try:
        prometheus = importlib.import_module("prometheus_client")
    except ImportError:
        return None
    registry: CollectorRegistry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(core, cluster, webhooks))
    prometheus.ProcessCollector(registry=registry)
    return registry


class MetricsPage:
    """``GET /metrics`` for one relay: the token check, and the rendered page,
    kept for :data:`MAX_AGE` seconds."""

    __slots__ = ("_body", "_digest", "_rendered_at", "registry")

    def __init__(self, registry: CollectorRegistry | None, token: str | None = None) -> None:
        self.registry = registry
        #: SHA-256 of the expected token (compared in constant time); None: open
        self._digest = None if token is None else hashlib.sha256(token.encode()).digest()
        self._body = b""
        self._rendered_at = -float("inf")

    def authorized(self, request: web.Request) -> bool:
        """True if no token is configured, or the request carries it."""
        if self._digest is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Digests of equal length: the comparison leaks neither the token nor its length.
        offered = hashlib.sha256(given.strip().encode("utf-8", "replace")).digest()
        return hmac.compare_digest(offered, self._digest)

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler."""
        if not self.authorized(request):
            return web.Response(
                status=401,
                text="/metrics needs Authorization: Bearer <metrics token>\n",
                headers={"WWW-Authenticate": 'Bearer realm="ratatoskr-metrics"'},
            )
        if self.registry is None:
            return web.Response(status=501, text=MISSING_METRICS)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        now = asyncio.get_running_loop().time()
        if now - self._rendered_at >= MAX_AGE:
            self._body = generate_latest(self.registry)
            self._rendered_at = now
        return web.Response(body=self._body, headers={"Content-Type": CONTENT_TYPE_LATEST})
