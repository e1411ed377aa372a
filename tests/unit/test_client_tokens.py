"""The client's tokens in its core, with a fake clock: renewal ahead of
expiry (in the connection where the server re-authenticates), failures
retried with backoff as events, the server's ``token_expired``, and a
document whose permission is revoked (REFUSED). No socket."""

from __future__ import annotations

import math

import cbor2
import pytest

from ratatoskr_client import PermissionRevoked, TokenRefreshError
from ratatoskr_client.core.outbox import RefreshToken
from ratatoskr_client.core.settings import Settings
from ratatoskr_client.protocol.tokens import mint_session_token, read_lifetime
from ratatoskr_client.status import DocumentState

from .coreharness import FULL, Harness

WALL = 1_800_000_000.0
SECRET = "upstream-test-secret-0123456789abcdef"
REAUTH = [*FULL, "reauth"]


def token(lifetime: float, wall: float) -> str:
    return mint_session_token("alice", SECRET, lifetime=lifetime, now=wall)


class TokenHarness(Harness):
    """A harness whose client has a token callable (the driver's part — calling
    it — is played by the test) and a wall clock that moves with ``now``."""

    def __init__(self, lifetime: float = 100.0) -> None:
        super().__init__(token=lambda: "unused")
        self.lifetime = lifetime
        self.core.tokens._wall = self.wall
        self.calls = 0

    def wall(self) -> float:
        return WALL + (self.now - 1000.0)

    def fetch(self) -> str:
        """What the driver does before a connect, or on a RefreshToken."""
        self.calls += 1
        fresh = token(self.lifetime, self.wall())
        self.core.token_fetched(fresh, self.now)
        return fresh


def refreshes(effects: list[object]) -> int:
    return sum(1 for e in effects if type(e) is RefreshToken)


def test_a_token_is_renewed_at_90_to_95_percent_of_its_lifetime_in_the_connection() -> None:
    h = TokenHarness(lifetime=100)
    h.core.connect_started()
    first = h.fetch()
    h.connect(features=REAUTH)
    assert cbor2.loads(h.core.auth_frame(h.now))["token"] == first
    # rand() is 0.5 in the harness: renewal at 92.5 % of the lifetime.
    assert refreshes(h.advance(92.4)) == 0
    effects = h.advance(0.2)
    assert refreshes(effects) == 1
    fresh = h.fetch()
    sent = h.sent(h.take())
    assert sent == [{"type": "auth", "token": fresh}]
    ok = {"type": "auth_ok", "peerId": "server", "clientPeerId": "me-1", "user": None}
    h.server({**ok, "features": REAUTH})
    # The next one is scheduled from the fresh token: 92.5 s later again.
    # (Its iat is rounded down to the second: up to 1 s earlier.)
    assert refreshes(h.advance(91.4)) == 0
    assert refreshes(h.advance(1.2)) == 1
    assert h.core.me is not None and h.core.me.peer_id == "me-1"


def test_without_reauth_the_client_renews_at_the_next_connect_only() -> None:
    h = TokenHarness(lifetime=100)
    h.core.connect_started()
    h.fetch()
    h.connect(features=FULL)  # upstream-like: no "reauth"
    assert refreshes(h.advance(500)) == 0
    assert h.core.tokens.refresh_at == math.inf


def test_a_failed_renewal_is_an_event_and_is_retried_with_backoff() -> None:
    h = TokenHarness(lifetime=100)
    h.core.connect_started()
    h.fetch()
    h.connect(features=REAUTH)
    assert refreshes(h.advance(93)) == 1
    failures = []
    for _ in range(4):
        error = TokenRefreshError("identity provider down")
        h.core.token_failed(error, h.now)
        effects = h.take()
        failures += h.events(effects, "token-refresh-failed")
        before = h.now
        while not refreshes(h.advance(0.25)):
            pass
        failures.append(("retry after", h.now - before))
    delays = [f[1] for f in failures if f[0] == "retry after"]
    assert [f[0] for f in failures].count("token-refresh-failed") == 4
    # 1, 2, 4, 8 s, times 0.75 (the harness's rand() of 0.5): growing.
    assert delays == sorted(delays)
    assert delays[0] == pytest.approx(0.75, abs=0.3)
    assert delays[-1] == pytest.approx(6.0, abs=0.3)


def test_a_refused_fresh_token_is_a_failure_not_an_error() -> None:
    h = TokenHarness(lifetime=100)
    h.core.connect_started()
    h.fetch()
    h.connect(features=REAUTH)
    h.advance(93)
    h.fetch()
    h.take()
    effects = h.server({"type": "error", "error": "user_mismatch", "message": "no"})
    assert [e[0] for e in h.events(effects)] == ["token-refresh-failed"]
    assert refreshes(h.advance(2)) == 1


def test_token_expired_renews_at_once() -> None:
    h = TokenHarness(lifetime=100)
    h.core.connect_started()
    h.fetch()
    h.connect(features=REAUTH)
    effects = h.server(
        {"type": "error", "error": "token_expired", "message": "expired", "retryAfter": 10}
    )
    assert h.events(effects, "error") == []
    assert refreshes(h.advance(0.01)) == 1


def test_the_token_callable_must_give_a_string() -> None:
    h = TokenHarness()
    h.core.connect_started()
    h.core.token_fetched(None, h.now)
    (event,) = h.events(h.take(), "token-refresh-failed")
    assert isinstance(event[1], TokenRefreshError)


def test_settings_take_a_callable_and_refuse_other_things() -> None:
    assert callable(Settings("http://x", token=lambda: "t").token)

    async def fetch() -> str:
        return "t"

    assert Settings("http://x", token=fetch).token is fetch
    with pytest.raises(ValueError, match="token must be"):
        Settings("http://x", token=42)  # type: ignore[arg-type]


def test_lifetimes_are_read_from_upstream_tokens_and_jwts_only() -> None:
    import jwt

    assert read_lifetime(token(60, WALL)) is not None
    lifetime = read_lifetime(
        jwt.encode({"sub": "a", "iat": 10, "exp": 70}, "k" * 32, algorithm="HS256")
    )
    assert lifetime is not None and (lifetime.issued_at, lifetime.expires_at) == (10, 70)
    for opaque in ("alice-secret", "rat_" + "a" * 64, "a.b", "a.b.c", ""):
        assert read_lifetime(opaque) is None


# --------------------------------------------------------------------------- revoked permissions


def test_a_revoked_document_is_refused_its_watchers_told_and_not_rejoined() -> None:
    h = Harness()
    h.connect()
    h.enter("doc", ["me-1", "bob"])
    watch = h.core.watch("doc")
    h.take()
    effects = h.server(
        {
            "type": "error",
            "error": "permission_revoked",
            "message": "read access to the document was revoked",
            "documentId": "doc",
        }
    )
    (event,) = h.events(effects, "document-refused")
    assert isinstance(event[1], PermissionRevoked) and event[1].document_id == "doc"
    assert h.events(effects, "error") == []
    assert h.core.docs.by_state()["refused"] == ("doc",)
    assert h.core.presence("doc") == ()
    assert h.finished(effects)[watch][-1] == ()  # the watch sees it empty
    # No heartbeat, and no join after a reconnect.
    assert [f for f in h.sent(h.advance(100)) if f["type"] == "ephemeral"] == []
    from ratatoskr_client.errors import ConnectionClosed

    h.core.connection_lost(ConnectionClosed("lost"), h.now)
    h.take()
    effects = h.connect()
    assert [f for f in h.sent(effects) if f["type"] == "ephemeral"] == []
    assert h.core.docs.by_state()["refused"] == ("doc",)
    # Entering it again asks again.
    h.core.enter("doc", h.now)
    joins = [f["payload"]["status"] for f in h.sent(h.take()) if f["type"] == "ephemeral"]
    assert joins == ["join"]
    assert h.core.docs.by_state()["entering"] == ("doc",)


def test_the_document_states_include_refused() -> None:
    assert DocumentState.REFUSED.value == "refused"
