"""User code calling the blocking client, type-checked (never run) by
tests/unit/test_sync_api.py with ``mypy --strict --warn-unused-ignores``.

Lines marked ``# type: ignore[...]`` are mistakes mypy must catch: if the
client's annotations stopped catching one, its ignore would be unused, and
mypy would fail the test.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping
from typing import Any, assert_type

from ratatoskr_client import Backoff, ClientOptions, ConnectionState, Peer, RatatoskrError, User
from ratatoskr_client.sync import PresenceWatch, RatatoskrClient


def bot(url: str) -> None:
    with RatatoskrClient(url, token=None, heartbeat_interval=10) as client:
        assert_type(client.enter_document("doc-123", timeout=5), tuple[Peer, ...])
        client.send_ephemeral("doc-123", {"hello": "world"})
        client.set_state("doc-123", "cursor", [1, 2])
        assert_type(
            client.wait_for_presence("doc-123", lambda ps: len(ps) >= 2, timeout=10),
            tuple[Peer, ...],
        )
        with client.watch_presence("doc-123", timeout=30) as watch:
            assert_type(watch, PresenceWatch)
            for peers in watch:
                assert_type(peers, tuple[Peer, ...])
        inbox: queue.Queue[tuple[str, Peer, Any]] = queue.Queue()
        client.on(
            "ephemeral-message", lambda doc, sender, payload: inbox.put((doc, sender, payload))
        )
        client.on("reconnecting", lambda attempt, delay: print(attempt + 1, delay * 2))

        @client.on("presence-changed")
        def show(doc_id: str, peers: tuple[Peer, ...]) -> None:
            print(doc_id, [p.name for p in peers])

        show("still callable as itself", ())

        def on_state(doc_id: str, peer: Peer, state: Mapping[str, Any]) -> None: ...
        def on_error(error: RatatoskrError) -> None: ...

        client.on("state-changed", on_state)

        @client.on("user-left")
        def gone(doc_id: str, user: User) -> None:
            print(doc_id, user.key, len(user.peers))

        assert_type(client.users("doc-123"), tuple[User, ...])
        client.on("user-joined", lambda doc, user: doc + 1)  # type: ignore[call-overload]
        client.once("error", on_error)
        client.off("error", on_error)
        assert_type(client.state("doc-123"), Mapping[str, Mapping[str, Any]])
        assert_type(client.peers, Mapping[str, Peer])
        assert_type(client.me, Peer)
        assert_type(client.connection_state, ConnectionState)
        assert_type(client.entered_documents, tuple[str, ...])

        # Mistakes mypy must catch:
        def wrong(doc_id: int) -> None: ...

        client.on("presence-changed", wrong)  # type: ignore[call-overload]
        client.on("presence-changed", lambda doc, peers: doc + 1)  # type: ignore[call-overload]
        client.on("no-such-event", print)  # type: ignore[call-overload]
        client.once("error", on_state)  # type: ignore[call-overload]
        client.enter_document(123)  # type: ignore[arg-type]
        client.watch_presence("doc-123", timeout="soon")  # type: ignore[arg-type]
        RatatoskrClient(url, session=None)  # type: ignore[call-arg]
        RatatoskrClient(url, heartbeat=10)  # type: ignore[call-arg]
        RatatoskrClient(url, rate_limit="many")  # type: ignore[arg-type]
        often: ClientOptions = {"ping_interval": "often"}  # type: ignore[typeddict-item]
        print(often)


def with_options(url: str) -> None:
    options: ClientOptions = {"backoff": Backoff(max_attempts=2), "state_ttl": 30.0}
    with RatatoskrClient(url, token="secret", name="bot", rate_limit=None) as plain:
        print(plain.me.chosen_name)
    with RatatoskrClient(url, **options) as tuned:
        print(tuned.features)
