"""The blocking client against a real relay (served from its own thread).

Plain threads, a thread pool, a running asyncio loop in the calling thread, a
WSGI server: every way the issue says people call it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import signal
import socketserver
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from ratatoskr_client import (
    CallbackError,
    ConnectError,
    ConnectionClosed,
    ConnectionState,
    DocumentNotFound,
    OperationTimeout,
    Peer,
    RatatoskrError,
)
from ratatoskr_client.sync import RatatoskrClient
from tests.relay_thread import RelayThread

WAIT = 5.0


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ratatoskr-loop"]


@pytest.fixture
def relay_thread() -> Iterator[RelayThread]:
    with RelayThread() as relay:
        yield relay


@pytest.fixture(autouse=True)
def _no_loop_thread_left_behind() -> Iterator[None]:
    yield
    assert loop_threads() == [], "a blocking client was left open"


def test_the_issue_example(relay_thread: RelayThread) -> None:
    url = relay_thread.url
    with RatatoskrClient(url, token=None) as client, RatatoskrClient(url) as guest:
        changes: queue.Queue[tuple[str, tuple[Peer, ...]]] = queue.Queue()
        client.on("presence-changed", lambda doc, peers: changes.put((doc, peers)))
        peers = client.enter_document("doc-123")
        assert peers == (client.me,)
        assert changes.get(timeout=WAIT) == ("doc-123", (client.me,))

        guest.enter_document("doc-123")
        both = client.wait_for_presence("doc-123", lambda ps: len(ps) >= 2, timeout=WAIT)
        assert [p.peer_id for p in both] == [client.me.peer_id, guest.me.peer_id]

        inbox: queue.Queue[Any] = queue.Queue()
        guest.on("ephemeral-message", lambda doc, sender, payload: inbox.put((sender, payload)))
        client.send_ephemeral("doc-123", {"hello": "world"})
        assert inbox.get(timeout=WAIT) == (client.me, {"hello": "world"})

        states: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        guest.on("state-changed", lambda doc, peer, state: states.put((peer.peer_id, dict(state))))
        client.set_state("doc-123", "cursor", [1, 2])
        while states.get(timeout=WAIT) != (
            client.me.peer_id,
            client.state("doc-123")[client.me.peer_id],
        ):
            pass
        assert guest.state("doc-123")[client.me.peer_id]["cursor"] == [1, 2]

        with client.watch_presence("doc-123", timeout=WAIT) as watch:
            assert len(next(watch)) == 2
            guest.leave_document("doc-123")
            assert next(watch) == (client.me,)
        assert client.entered_documents == ("doc-123",)
        assert client.is_connected
        assert client.connection_state is ConnectionState.CONNECTED
        assert client.server_presence and "presence" in client.features
    assert client.connection_state is ConnectionState.CLOSED


def test_callbacks_run_on_the_loop_thread_and_cannot_block_it(relay_thread: RelayThread) -> None:
    with RatatoskrClient(relay_thread.url) as client:
        where: queue.Queue[str] = queue.Queue()
        errors: queue.Queue[RatatoskrError] = queue.Queue()

        @client.on("presence-changed")
        def call_back_into_the_client(doc: str, peers: tuple[Peer, ...]) -> None:
            where.put(threading.current_thread().name)
            assert client.presence(doc) == peers  # reads work on the loop thread
            client.send_ephemeral(doc, "a blocking call from a callback")  # cannot

        client.on("error", errors.put)
        client.enter_document("doc")
        assert where.get(timeout=WAIT) == "ratatoskr-loop"
        error = errors.get(timeout=WAIT)
        assert isinstance(error, CallbackError)
        assert isinstance(error.__cause__, RuntimeError)
        assert "would wait for itself" in str(error.__cause__)
        assert client.is_connected  # nothing else was harmed


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def thread_signal_masks() -> dict[str, str]:
    """Each thread's blocked, pending and ignored signals, as the kernel sees them."""
    masks = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        masks[f"{task.name} {fields.get('Name', '')}"] = (
            f"blocked {fields.get('SigBlk')} pending {fields.get('SigPnd')} "
            f"ignored {fields.get('SigIgn')}"
        )
    return masks


def test_ctrl_c_cancels_the_call_it_interrupts(
    relay_thread: RelayThread, ctrl_c_raises: None
) -> None:
    """KeyboardInterrupt in the waiting (main) thread cancels the work underneath:
    an interrupted enter_document does not leave the client in the document."""
    sent: list[float] = []

    def press_ctrl_c() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    with RatatoskrClient(relay_thread.url) as client:
        with relay_thread.frozen():  # the server cannot confirm: only Ctrl-C ends the call
            ctrl_c = threading.Timer(0.1, press_ctrl_c)
            started = time.monotonic()
            ctrl_c.start()
            try:
                client.enter_document("doc")
            except KeyboardInterrupt:
                pass
            except Exception as exc:  # what the process looked like, should it happen
                pytest.fail(
                    f"no KeyboardInterrupt but {exc!r} after {time.monotonic() - started:.1f} s; "
                    f"SIGINT sent after {[round(t - started, 2) for t in sent]} s; "
                    f"threads' signal masks: {thread_signal_masks()}"
                )
            else:
                pytest.fail("the call returned although the relay could not answer")
            ctrl_c.join()
        # The cancelled enter is undone on the loop thread, just after the
        # interrupt reached this one.
        assert eventually(lambda: client.entered_documents == ())
        assert client.enter_document("other") == (client.me,)  # still usable
        # The relay reads a connection's frames in order: by the time it
        # confirmed "other", "doc" had been left (or never joined).
        assert relay_thread.stats().memberships == 1


class _InterruptedAfterHandOver:
    """The loop as a blocking call sees it, where Ctrl-C lands just after the
    call was handed over and before the caller starts waiting for it."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self.interrupted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def call_soon_threadsafe(self, *args: Any) -> Any:
        handle = self._loop.call_soon_threadsafe(*args)
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return handle


def test_ctrl_c_between_the_hand_over_and_the_wait_cancels_the_call_too(
    relay_thread: RelayThread,
) -> None:
    with RatatoskrClient(relay_thread.url) as client:
        client.connect()
        loop_thread = client._loop
        interrupting = _InterruptedAfterHandOver(loop_thread._loop)
        # Frozen: the server cannot confirm before the cancellation is handled.
        with relay_thread.frozen():
            loop_thread._loop = interrupting
            try:
                with pytest.raises(KeyboardInterrupt):
                    client.enter_document("doc")
            finally:
                loop_thread._loop = interrupting._loop
            assert eventually(lambda: client.entered_documents == ())
        assert client.enter_document("other") == (client.me,)
        # The relay reads a connection's frames in order: "doc" was never
        # joined (the cancel came before the task's first step) or was left.
        assert relay_thread.stats().memberships == 1
        assert client.entered_documents == ("other",)


def test_the_asyncio_clients_exceptions_come_through(relay_thread: RelayThread) -> None:
    unreachable = RatatoskrClient("http://127.0.0.1:9", connect_timeout=WAIT)
    with pytest.raises(ConnectError):
        unreachable.connect()
    unreachable.close()
    with pytest.raises(ValueError, match="rate_limit"):
        RatatoskrClient(relay_thread.url, rate_limit=0)

    with RelayThread(open=False) as closed, RatatoskrClient(closed.url) as client:
        with pytest.raises(DocumentNotFound) as refused:
            client.enter_document("doc-123")
        assert refused.value.document_id == "doc-123"
        with pytest.raises(OperationTimeout):
            client.wait_for_presence("doc-123", lambda ps: len(ps) == 5, timeout=0.1)
        with pytest.raises(ValueError, match="unknown event"):
            client.on("no-such-event", print)  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="unknown event"):
            client.on("no-such-event")  # type: ignore[call-overload]


def test_reads_are_snapshots(relay_thread: RelayThread) -> None:
    with RatatoskrClient(relay_thread.url) as a:
        before = a.peers
        with RatatoskrClient(relay_thread.url) as b:
            a.enter_document("doc")
            b.enter_document("doc")
            a.wait_for_presence("doc", lambda ps: len(ps) == 2, timeout=WAIT)
            assert set(a.peers) == {a.me.peer_id, b.me.peer_id}
            assert set(before) == {a.me.peer_id}  # taken before b came: unchanged
            with pytest.raises(TypeError):
                before["x"] = a.me  # type: ignore[index]

            changes: queue.Queue[Any] = queue.Queue()
            a.on("state-changed", lambda doc, peer, state: changes.put(state.get("cursor")))
            b.set_state("doc", "cursor", [1])
            while changes.get(timeout=WAIT) != [1]:
                pass
            snapshot = a.state("doc")
            b.set_state("doc", "cursor", [2])
            while changes.get(timeout=WAIT) != [2]:
                pass
            assert snapshot[b.me.peer_id]["cursor"] == [1]
            assert a.state("doc")[b.me.peer_id]["cursor"] == [2]


def test_many_threads_with_their_own_clients_and_one_shared(relay_thread: RelayThread) -> None:
    url = relay_thread.url
    workers = 8

    everyone_saw_everyone = threading.Barrier(workers)

    def participant(i: int) -> int:
        with RatatoskrClient(url) as client:
            client.enter_document("room")
            present = client.wait_for_presence(
                "room", lambda ps: len(ps) >= workers, timeout=WAIT * 2
            )
            everyone_saw_everyone.wait(WAIT * 2)  # nobody leaves before that
            return len(present)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        assert list(pool.map(participant, range(workers))) == [workers] * workers
    assert len(loop_threads()) == 0  # the last close stopped the shared loop

    with RatatoskrClient(url) as shared, RatatoskrClient(url) as listener:
        inbox: queue.Queue[Any] = queue.Queue()
        listener.on("ephemeral-message", lambda doc, sender, payload: inbox.put(payload))
        docs = [f"doc-{i}" for i in range(workers)]
        for doc in docs:
            listener.enter_document(doc)

        def use_shared(doc: str) -> tuple[Peer, ...]:
            peers = shared.enter_document(doc)
            shared.send_ephemeral(doc, doc)
            return peers

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(use_shared, docs))
        assert all(len(peers) == 2 for peers in results)
        assert sorted(inbox.get(timeout=WAIT) for _ in docs) == sorted(docs)
        assert set(shared.entered_documents) == set(docs)
        assert len(loop_threads()) == 1  # one loop for every client of the process


def test_inside_a_running_event_loop(relay_thread: RelayThread) -> None:
    """What a notebook does: the calling thread already runs an asyncio loop."""

    async def notebook_cell() -> tuple[Peer, ...]:
        with RatatoskrClient(relay_thread.url) as client:
            return client.enter_document("doc")

    peers = asyncio.run(notebook_cell())
    assert len(peers) == 1


def test_watch_presence_times_out_and_ends_when_the_client_closes(
    relay_thread: RelayThread,
) -> None:
    client = RatatoskrClient(relay_thread.url)
    client.connect()
    watch = client.watch_presence("doc", timeout=0.2)
    assert next(watch) == ()
    with pytest.raises(OperationTimeout, match=r"did not change within 0\.2 s"):
        next(watch)
    with pytest.raises(StopIteration):
        next(watch)  # a timed-out watch is over

    endless = client.watch_presence("doc")
    assert next(endless) == ()
    closer = threading.Thread(target=client.close)
    closer.start()
    assert list(endless) == []  # the close ended it
    closer.join(WAIT)
    with pytest.raises(ConnectionClosed, match="closed"):
        client.connect()  # a closed blocking client stays closed


def test_a_watch_asked_after_its_client_closed_has_ended(relay_thread: RelayThread) -> None:
    # The test above races the close against the wait; here the close has won
    # (the loop thread is gone), which must end the watch too, not raise.
    client = RatatoskrClient(relay_thread.url)
    client.connect()
    endless = client.watch_presence("doc")
    assert next(endless) == ()
    client.close()
    assert list(endless) == []


def test_an_unclosed_client_is_closed_when_collected(relay_thread: RelayThread) -> None:
    with RatatoskrClient(relay_thread.url) as observer:
        observer.enter_document("doc")

        def forget_a_client() -> None:
            client = RatatoskrClient(relay_thread.url)
            client.connect()
            client.enter_document("doc")

        with pytest.warns(ResourceWarning, match="unclosed blocking client"):
            forget_a_client()
        observer.wait_for_presence("doc", lambda ps: len(ps) == 1, timeout=WAIT)
        relay_thread.wait_until(lambda stats: stats.connections == 1, WAIT)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request, like a threaded production WSGI server."""

    daemon_threads = True


def test_under_a_threaded_wsgi_server(relay_thread: RelayThread) -> None:
    """A web app shares one blocking client between its request threads."""
    with (
        RatatoskrClient(relay_thread.url) as app_client,
        RatatoskrClient(relay_thread.url) as audience,
    ):
        audience.enter_document("news")
        inbox: queue.Queue[Any] = queue.Queue()
        audience.on("ephemeral-message", lambda doc, sender, payload: inbox.put(payload))

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            headline = environ["PATH_INFO"].strip("/")
            app_client.send_ephemeral("news", {"headline": headline})
            present = app_client.enter_document("news")
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"present": len(present)}).encode()]

        server = make_server(
            "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        try:
            base = f"http://127.0.0.1:{server.server_port}"

            def get(i: int) -> dict[str, Any]:
                with urllib.request.urlopen(f"{base}/story-{i}", timeout=WAIT) as response:
                    return json.loads(response.read())  # type: ignore[no-any-return]

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(get, range(12)))
        finally:
            server.shutdown()
            server.server_close()
            serving.join(WAIT)
        assert all(answer["present"] == 2 for answer in answers)
        headlines = {inbox.get(timeout=WAIT)["headline"] for _ in range(12)}
        assert headlines == {f"story-{i}" for i in range(12)}


def test_me_and_bad_options_raise_what_the_asyncio_client_raises(
    relay_thread: RelayThread,
) -> None:
    client = RatatoskrClient(relay_thread.url)
    try:
        with pytest.raises(RuntimeError, match="only known once connected"):
            _ = client.me  # never connected: a usage error, as documented
        client.connect()
        me = client.me
    finally:
        client.close()
    assert client.me == me  # closed: the last identity
    with pytest.raises(TypeError, match="'heartbeat'"):
        RatatoskrClient(relay_thread.url, heartbeat=3)  # type: ignore[call-arg]


def test_users_and_user_events(relay_thread: RelayThread) -> None:
    with RatatoskrClient(relay_thread.url) as a:
        events: queue.Queue[tuple[str, str]] = queue.Queue()
        a.on("user-joined", lambda doc, user: events.put(("joined", user.key)))
        a.on("user-left", lambda doc, user: events.put(("left", user.key)))
        a.enter_document("doc")
        assert events.get(timeout=WAIT) == ("joined", a.me.peer_id)
        with RatatoskrClient(relay_thread.url) as b:
            b.enter_document("doc")
            assert events.get(timeout=WAIT) == ("joined", b.me.peer_id)
            assert [u.peers for u in a.users("doc")] == [(a.me,), (b.me,)]
            gone = b.me.peer_id
        assert events.get(timeout=WAIT) == ("left", gone)
        assert [u.key for u in a.users("doc")] == [a.me.peer_id]


def test_a_token_callable_is_called_off_the_loop_thread_and_renewed() -> None:
    """The blocking client takes a token callable too: a blocking one runs in
    a worker thread (never on the client's loop thread), at connect and
    ahead of expiry, and the connection survives its tokens' lifetimes."""
    import jwt

    from ratatoskr_client.server import RelayConfig
    from ratatoskr_client.server.config import JwtTokens

    secret = "jwt-secret-of-at-least-32-bytes-long!"
    threads: list[str] = []

    def mint() -> str:
        threads.append(threading.current_thread().name)
        now = int(time.time())
        return jwt.encode({"sub": "bot", "iat": now, "exp": now + 2}, secret, "HS256")

    config = RelayConfig(open=True, identity=(JwtTokens(secret=secret, clock_skew=0),))
    with RelayThread(config) as relay, RatatoskrClient(relay.url, token=mint) as client:
        peer_id = client.me.peer_id
        assert eventually(lambda: len(threads) >= 3, 10), threads
        assert client.is_connected and client.me.peer_id == peer_id
    assert not any(name.startswith("ratatoskr") for name in threads), threads


def http_session_of(client: RatatoskrClient) -> Any:
    """The aiohttp session the client's sockets are opened with."""
    return client._loop.call(lambda: client._client._driver._http)


def test_blocking_clients_share_one_http_session_that_outlives_each_of_them(
    relay_thread: RelayThread,
) -> None:
    """One session per loop, not per client (it costs about 6 KiB); closing a
    client does not close it under the others, and it keeps no cookies (one
    jar for every identity of the process)."""
    with RatatoskrClient(relay_thread.url) as first, RatatoskrClient(relay_thread.url) as second:
        session = http_session_of(first)
        assert session is http_session_of(second)
        session.cookie_jar.update_cookies({"sid": "one identity's"})
        assert len(session.cookie_jar) == 0
        second.enter_document("doc")
        first.close()
        assert not session.closed
        with RatatoskrClient(relay_thread.url) as third:  # connects through it too
            assert http_session_of(third) is session
            third.enter_document("doc")
            peers = second.wait_for_presence("doc", lambda ps: len(ps) == 2, timeout=WAIT)
            assert third.me in peers


def test_the_shared_http_session_closes_with_its_loop_and_a_new_loop_makes_a_new_one(
    relay_thread: RelayThread,
) -> None:
    with RatatoskrClient(relay_thread.url) as client:
        session = http_session_of(client)
    assert loop_threads() == []  # the last close stopped the loop...
    assert session.closed  # ...and the loop closed its session
    with RatatoskrClient(relay_thread.url) as client:
        assert http_session_of(client) is not session
        assert client.enter_document("doc") == (client.me,)
