"""The admin API, the dashboard's live stream and its static files, on aiohttp.

Routes (only with ``admin_token`` configured; otherwise every ``/admin/``
path answers 404 ``{"error": "not_found"}``):

* ``GET /admin/`` and ``/admin/static/*``: the dashboard, static files shipped
  in the package (no build step, nothing fetched from elsewhere). The page
  itself needs no token: it holds no data, and asks for the token.
* ``/admin/api/...``: the JSON API (:mod:`ratatoskr_client.server.core.admin`
  holds its rules), every call with ``Authorization: Bearer <token>``.
* ``GET /admin/api/stream``: Server-Sent Events for the dashboard. One
  :class:`LiveView` per relay builds one snapshot of what the dashboard shows
  at most :data:`STREAM_HZ` times a second, while at least one tab listens,
  and only when it changed sends it, the same encoded bytes, to every tab;
  a tab that cannot keep up gets the latest snapshot, never a backlog. The
  cost of a tab is therefore one write per snapshot, not a query of its own
  (measured in ``docs/server.md``).

This module moves requests and bytes only; what a call may do is the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Final

from aiohttp import web

from ..cluster import Cluster
from ..core import admin as rules
from ..core.relay import RelayCore

__all__ = [
    "MAX_STREAMS",
    "STREAM_HZ",
    "AdminLink",
    "LiveView",
    "add_admin_routes",
    "add_disabled_admin_routes",
    "dashboard_snapshot",
]

log = logging.getLogger("ratatoskr_client.server")

#: Snapshots per second the dashboard stream sends at most (when something changed).
STREAM_HZ: Final = 8
#: The largest share of the relay's time the dashboard's snapshots may take
#: (they are spaced out further when building one takes longer).
MAX_SHARE: Final = 0.1
#: Dashboard streams a relay serves at once; more are refused (429).
MAX_STREAMS: Final = 32
#: The longest a request body may be (publish, disconnect).
MAX_BODY: Final = 1 << 20
#: A comment line sent to idle streams every this many seconds, so proxies and
#: the browser keep them open.
KEEPALIVE: Final = 15.0

_STATIC: Final = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": code, "message": message}, status)


def _wall(core: RelayCore) -> Callable[[float], float]:
    """The core's clock (monotonic) to epoch seconds."""
    offset = time.time() - core.clock()
    return lambda t: t + offset


def dashboard_snapshot(
    core: RelayCore, remote: rules.RemoteView | None, rate: float
) -> dict[str, Any]:
    """What the dashboard shows now (:func:`ratatoskr_client.server.core.admin.dashboard`)."""
    return rules.dashboard(core, remote, rate, _wall(core))


class LiveView:
    """The dashboard's stream: one snapshot for every tab (see the module docstring)."""

    def __init__(self, core: RelayCore, cluster: Cluster | None) -> None:
        self._core = core
        self._cluster = cluster
        self._tabs: set[asyncio.Queue[bytes | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last = b""
        #: snapshots built and bytes sent, for the cost measurement
        self.snapshots = 0
        self.bytes_sent = 0

    @property
    def tabs(self) -> int:
        """Streams open now."""
        return len(self._tabs)

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        """A new tab: its queue gets the current snapshot at once, then changes."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self._tabs.add(queue)
        if self._last:
            queue.put_nowait(self._last)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ratatoskr-dashboard")
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        """The tab is gone."""
        self._tabs.discard(queue)

    def close(self) -> None:
        """The relay stops: every stream ends."""
        for queue in self._tabs:
            _replace(queue, None)
        self._tabs.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        counters = self._core.counters
        relayed = counters.relayed_local + counters.relayed_remote
        last = time.monotonic()
        rate = 0.0
        while self._tabs:
            now = time.monotonic()
            total = counters.relayed_local + counters.relayed_remote
            if now > last:
                # An average over about a second, updated every snapshot.
                instant = (total - relayed) / (now - last)
                weight = min(1.0, (now - last) / 1.0)
                rate += (instant - rate) * weight
            relayed, last = total, now
            try:
                view = self._cluster.view if self._cluster is not None else None
                snapshot = dashboard_snapshot(self._core, view, rate)
                data = json.dumps(snapshot, separators=(",", ":")).encode()
            except Exception:  # a bug here must not end the stream for good
                log.exception("dashboard snapshot failed")
                data = b""
            self.snapshots += 1
            frame = b"data: " + data + b"\n\n"
            if data and frame != self._last:
                self._last = frame  # (what a tab that opens now gets first)
                for queue in self._tabs:
                    _replace(queue, frame)
            # At most STREAM_HZ snapshots a second, and at most a tenth of the
            # relay's time: a snapshot that took 20 ms waits 180 ms for the next.
            took = time.monotonic() - now
            await asyncio.sleep(max(1 / STREAM_HZ, took * (1 / MAX_SHARE - 1)))
        self._last = b""


def _replace(queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
    """Put ``item`` in a one-slot queue, dropping what the reader did not take yet."""
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(item)


_LIVE_KEY: Final = web.AppKey("ratatoskr_admin_live", LiveView)
_TOKEN_KEY: Final = web.AppKey("ratatoskr_admin_token", str)


def _core(request: web.Request) -> RelayCore:
    from .app import CORE_KEY

    return request.app[CORE_KEY]


def _remote(request: web.Request) -> rules.RemoteView | None:
    from .app import CLUSTER_KEY

    cluster = request.app.get(CLUSTER_KEY)
    return cluster.view if cluster is not None else None


def _authorized(request: web.Request) -> web.Response | None:
    """None if the request carries the admin token, else the 401 answer."""
    if rules.authorized(request.app[_TOKEN_KEY], request.headers.get("Authorization")):
        return None
    return web.json_response(
        {"error": "unauthorized", "message": "this needs 'Authorization: Bearer <admin token>'"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="ratatoskr-admin"', "Cache-Control": "no-store"},
    )


async def _body(request: web.Request) -> object:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise rules.AdminError(413, "payload_too_large", f"bodies are at most {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise rules.AdminError(413, "payload_too_large", f"bodies are at most {MAX_BODY} bytes")
    try:
        return json.loads(raw) if raw else {}
    except ValueError as exc:
        raise rules.AdminError(400, "invalid_request", f"the body is not JSON: {exc}") from None


def _api(
    answer: Callable[[web.Request], Any],
) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        refused = _authorized(request)
        if refused is not None:
            return refused
        try:
            result = answer(request)
            if asyncio.iscoroutine(result):
                result = await result
        except rules.AdminError as exc:
            return _json(exc.to_json(), exc.status)
        return _json(result)

    return handler


async def _disconnect(request: web.Request) -> Any:
    body = await _body(request)
    result = rules.disconnect(_core(request), body, _remote(request))
    if result.get("forwarded"):
        link = request.app.get(_LINK_KEY)
        command = rules.disconnect_command(body)
        if link is None or not await link.send({"op": "disconnect", "command": command}):
            result["forwarded"] = []
            result["forwardFailed"] = True
    log.info(
        "admin: disconnected %s (forwarded: %s)",
        ", ".join(result["disconnected"]) or "none here",
        ", ".join(result.get("forwarded", ())) or "none",
    )
    return result


async def _publish(request: web.Request) -> Any:
    body = await _body(request)
    document_id = request.match_info["document"]
    result = rules.publish(_core(request), document_id, body)
    link = request.app.get(_LINK_KEY)
    if link is not None:
        data = rules.publish_data(_core(request), body)
        message = {"op": "publish", "documentId": document_id, "data": data.hex()}
        result["forwarded"] = await link.send(message)
    return result


class AdminLink:
    """The admin API's commands between the relays of a cluster: a call to
    one relay's API that concerns peers of others (a disconnect, a publish)
    is published on the Redis channel ``<prefix>:admin``, which every relay
    with an admin token subscribes to, and each applies it to its own peers.
    Subscribed before the relay listens (:meth:`start`)."""

    def __init__(self, core: RelayCore, cluster: Cluster, url: str) -> None:
        self._core = core
        self._node = cluster.node_id
        self._channel = f"{cluster.view.names.prefix}:admin"
        self._url = url
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._client: Any = None

    async def start(self, timeout: float = 5.0) -> None:
        """Subscribe (waiting up to ``timeout`` seconds; it keeps trying)."""
        self._task = asyncio.create_task(self._listen(), name="ratatoskr-admin-link")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def stop(self) -> None:
        """Unsubscribe and close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    def _redis(self) -> Any:
        aioredis = importlib.import_module("redis.asyncio")
        return aioredis.from_url(self._url, socket_timeout=5.0, socket_connect_timeout=5.0)

    async def send(self, message: dict[str, Any]) -> bool:
        """Publish ``message`` to the other relays; False if Redis is unreachable."""
        if self._client is None:
            self._client = self._redis()
        try:
            await self._client.publish(
                self._channel, json.dumps({**message, "from": self._node}).encode()
            )
        except Exception as exc:
            log.warning("admin: cannot reach the other relays through Redis: %s", exc)
            return False
        return True

    async def _listen(self) -> None:
        while True:
            client = self._redis()
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None:
                        self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("admin: link to Redis lost (%s); retrying", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _apply(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            if message.get("from") == self._node:
                return  # our own, applied already
            if message["op"] == "disconnect":
                done = rules.apply_disconnect(self._core, message["command"])
                if done:
                    log.info("admin (from %s): disconnected %s", message["from"], ", ".join(done))
            elif message["op"] == "publish":
                self._core.publish(message["documentId"], bytes.fromhex(message["data"]))
        except Exception:  # another relay's bug must not end the link
            log.exception("admin: ignored a malformed command from the cluster")


_LINK_KEY: Final = web.AppKey("ratatoskr_admin_link", AdminLink)


async def _stream(request: web.Request) -> web.StreamResponse:
    refused = _authorized(request)
    if refused is not None:
        return refused
    live = request.app[_LIVE_KEY]
    if live.tabs >= MAX_STREAMS:
        return _error(429, "too_many_streams", f"at most {MAX_STREAMS} dashboard streams at once")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    queue = live.subscribe()
    try:
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                frame = b": keep-alive\n\n"
            if frame is None:
                break
            await response.write(frame)
            live.bytes_sent += len(frame)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        live.unsubscribe(queue)
    return response


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name", "index.html") or "index.html"
    kind = _STATIC.get(name)
    if kind is None:
        return _error(404, "not_found", f"no file {name!r}")
    data = resources.files(__package__).joinpath("dashboard", name).read_bytes()
    return web.Response(
        body=data,
        content_type=kind,
        charset="utf-8" if kind.startswith("text/") else None,
        headers={
            "Cache-Control": "no-cache",
            # Nothing from elsewhere: the page works offline and leaks nothing.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/")


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, "not_found", "no such admin resource")


async def _disabled(request: web.Request) -> web.Response:
    return _error(404, "not_found", "the admin API is not enabled on this relay (admin_token)")


async def _close_streams(app: web.Application) -> None:
    app[_LIVE_KEY].close()


def add_admin_routes(app: web.Application, core: RelayCore, cluster: Cluster | None) -> None:
    """Serve the admin API and the dashboard (``core.config.admin_token`` is set)."""
    token = core.config.admin_token
    assert token is not None
    app[_TOKEN_KEY] = token
    app[_LIVE_KEY] = LiveView(core, cluster)
    router = app.router
    router.add_get("/admin", _redirect)
    router.add_get("/admin/", _static)
    router.add_get("/admin/static/{name}", _static)
    router.add_get("/admin/api/nodes", _api(lambda r: rules.nodes(_core(r), _remote(r))))
    router.add_get("/admin/api/documents", _api(lambda r: rules.documents(_core(r), _remote(r))))
    router.add_get(
        "/admin/api/documents/{document}",
        _api(
            lambda r: rules.document_presence(
                _core(r), _remote(r), r.match_info["document"], _wall(_core(r))
            )
        ),
    )
    router.add_get(
        "/admin/api/connections",
        _api(lambda r: rules.connections(_core(r), _remote(r), r.query)),
    )
    router.add_post("/admin/api/disconnect", _api(_disconnect))
    router.add_post("/admin/api/documents/{document}/publish", _api(_publish))
    router.add_get("/admin/api/stream", _stream)
    router.add_route("*", "/admin/{tail:.*}", _not_found)
    app.on_shutdown.append(_close_streams)
    if cluster is not None and core.config.redis_url is not None:
        app[_LINK_KEY] = AdminLink(core, cluster, core.config.redis_url)
        app.cleanup_ctx.append(_admin_link)


async def _admin_link(app: web.Application) -> AsyncIterator[None]:
    link = app[_LINK_KEY]
    await link.start()
    yield
    await link.stop()


def add_disabled_admin_routes(app: web.Application) -> None:
    """No admin token: every ``/admin`` path is a JSON 404."""
    app.router.add_route("*", "/admin", _disabled)
    app.router.add_route("*", "/admin/{tail:.*}", _disabled)
