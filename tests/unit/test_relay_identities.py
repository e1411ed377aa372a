"""Identity and permission providers in the relay's core: upstream session
tokens, JWTs, remote look-ups (parked frames, caches, the failed-auth budget),
token expiry and re-authentication, revocation; and upstream's access rules
over a database built with upstream's schema. No I/O: the look-ups are
answered by the test, the clocks are fake."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ratatoskr_client.errors import ConfigError
from ratatoskr_client.protocol import (
    AuthErrorFrame,
    AuthFrame,
    AuthOkFrame,
    EphemeralFrame,
    ErrorFrame,
)
from ratatoskr_client.protocol.tokens import mint_session_token, read_lifetime
from ratatoskr_client.server import RelayConfig
from ratatoskr_client.server.config import (
    Access,
    HttpPermissions,
    JwtTokens,
    UpstreamApiTokens,
    UpstreamDatabase,
    UpstreamSessionTokens,
    load_config,
)
from ratatoskr_client.server.core.identities import (
    Identity,
    Lookup,
    Refused,
    Unavailable,
    verify_upstream_session,
)
from ratatoskr_client.server.core.upstream_acl import upstream_access

from ..upstream_db import UpstreamDb
from .test_relay_core import USERS, Relay

SECRET = "upstream-test-secret-0123456789abcdef"
WALL = 1_800_000_000.0
JWT_SECRET = "jwt-secret-of-at-least-32-bytes-long!"


class WallRelay(Relay):
    """A relay whose wall clock moves with its monotonic one."""

    def __init__(self, config: RelayConfig) -> None:
        super().__init__(config)
        self.lookups: list[Lookup] = []
        self.core.request = self.lookups.append
        offset = WALL - self.clock.now
        self.core.wall_clock = self.core.auth.wall = lambda: self.clock.now + offset

    @property
    def wall(self) -> float:
        return self.core.wall_clock()


def session_token(user: str, lifetime: float, wall: float = WALL, secret: str = SECRET) -> str:
    return mint_session_token(user, secret, lifetime=lifetime, now=wall)


# --------------------------------------------------------------------------- upstream session


def test_upstream_session_tokens_are_verified_like_upstream() -> None:
    token = session_token("alice", 60)
    assert verify_upstream_session(token, SECRET, WALL, 5) == Identity("alice", "alice", WALL + 65)
    assert verify_upstream_session(token, "another-secret", WALL, 5) == Refused()
    assert verify_upstream_session(token, SECRET, WALL + 66, 5) == Refused()
    assert verify_upstream_session(token, SECRET, WALL + 64, 5) is not None
    data, sig = token.split(".")
    assert verify_upstream_session(f"{data}.{sig[:-1]}A", SECRET, WALL, 5) == Refused()
    assert verify_upstream_session("no-dots", SECRET, WALL, 5) is None  # not its shape
    assert verify_upstream_session(".x", SECRET, WALL, 5) == Refused()
    assert read_lifetime(token) is not None


def test_a_known_upstream_token_matches_upstreams_own_encoding() -> None:
    # Made by upstream's createSessionToken (Node's base64url, unpadded) with SECRET.
    import base64
    import hashlib
    import hmac
    import json

    data = (
        base64.urlsafe_b64encode(
            json.dumps({"sub": "u1", "exp": 1900000000, "iat": 1800000000, "type": "session"})
            .replace(" ", "")
            .encode()
        )
        .rstrip(b"=")
        .decode()
    )
    sig = base64.urlsafe_b64encode(
        hmac.new(SECRET.encode(), data.encode(), hashlib.sha256).digest()
    )
    token = f"{data}.{sig.rstrip(b'=').decode()}"
    assert token == mint_session_token("u1", SECRET, lifetime=100_000_000, now=1_800_000_000)


def upstream_relay(**options: Any) -> WallRelay:
    return WallRelay(
        RelayConfig(open=True, identity=(UpstreamSessionTokens(SECRET, 5.0),), **options)
    )


def test_the_relay_accepts_upstream_session_tokens_and_refuses_bad_ones() -> None:
    relay = upstream_relay()
    ok = relay.peer(session_token("alice", 60))
    assert ok.session.user_id == "alice"
    bad = relay.peer(auth=False)
    bad.send(AuthFrame(token=session_token("alice", 60, secret="wrong")))
    frame = bad.take_one()
    assert isinstance(frame, AuthErrorFrame) and frame.error == "invalid_token"
    assert bad.outbox.closed == (1008, "invalid_token")
    late = relay.peer(auth=False)
    late.send(AuthFrame(token=session_token("alice", 60, wall=WALL - 100)))
    assert isinstance(late.take_one(), AuthErrorFrame)


# --------------------------------------------------------------------------- expiry and re-auth


def test_expiry_warns_then_closes_after_the_grace() -> None:
    relay = upstream_relay(reauth_grace=3)
    peer = relay.peer(session_token("alice", 10))
    peer.take()
    relay.clock.advance(14.9)  # exp + 5 s of skew not reached yet
    relay.core.on_timer()
    assert peer.take() == []
    relay.clock.advance(1.2)
    relay.core.on_timer()
    warned = peer.take_one()
    assert isinstance(warned, ErrorFrame) and warned.error == "token_expired"
    assert warned.retry_after == 3
    assert peer.outbox.closed is None
    relay.clock.advance(3.1)
    relay.core.on_timer()
    assert peer.outbox.closed == (1008, "token_expired")


def test_reauth_keeps_the_peer_and_nobody_sees_it() -> None:
    relay = upstream_relay(reauth_grace=3)
    watcher = relay.peer(session_token("bob", 3600))
    peer = relay.peer(session_token("alice", 10))
    watcher.join("doc")
    peer.join("doc")
    watcher.take()
    peer.take()
    for _ in range(5):  # five lifetimes, each renewed before it ends
        relay.clock.advance(8)
        relay.core.on_timer()
        peer.send(AuthFrame(token=session_token("alice", 10, wall=relay.wall)))
        ok = peer.take_one()
        assert isinstance(ok, AuthOkFrame)
        assert ok.client_peer_id == peer.peer_id
        assert "reauth" in (ok.features or ())
    relay.clock.advance(6)
    relay.core.on_timer()
    assert peer.take() == []
    assert watcher.take() == []  # no leave, no join
    assert relay.core.presence("doc") == (watcher.peer_id, peer.session.peer_id)


def test_reauth_after_the_warning_cancels_the_close() -> None:
    relay = upstream_relay(reauth_grace=3)
    peer = relay.peer(session_token("alice", 10))
    peer.take()
    relay.clock.advance(16)
    relay.core.on_timer()
    assert isinstance(peer.take_one(), ErrorFrame)
    peer.send(AuthFrame(token=session_token("alice", 10, wall=relay.wall)))
    assert isinstance(peer.take_one(), AuthOkFrame)
    relay.clock.advance(5)
    relay.core.on_timer()
    assert peer.outbox.closed is None


def test_reauth_for_another_user_is_refused_and_changes_nothing() -> None:
    relay = upstream_relay()
    peer = relay.peer(session_token("alice", 10))
    peer.take()
    peer.send(AuthFrame(token=session_token("mallory", 10)))
    refused = peer.take_one()
    assert isinstance(refused, ErrorFrame) and refused.error == "user_mismatch"
    assert peer.session.user_id == "alice"
    assert peer.outbox.closed is None


def test_static_tokens_never_expire() -> None:
    relay = WallRelay(RelayConfig(open=True, users=USERS))
    peer = relay.peer("alice-secret")
    peer.take()
    relay.clock.advance(10_000)
    relay.core.on_timer()
    assert all(not isinstance(f, ErrorFrame) for f in peer.take())


# --------------------------------------------------------------------------- JWT


def test_jwt_hs256_with_claims_issuer_and_audience() -> None:
    provider = JwtTokens(
        secret=JWT_SECRET, issuer="https://issuer", audience="relay", name_claim="nick"
    )
    relay = WallRelay(RelayConfig(open=True, identity=(provider,)))
    claims = {"sub": "carol", "nick": "Carol", "iss": "https://issuer", "aud": "relay"}
    good = jwt.encode({**claims, "exp": relay.wall + 5}, JWT_SECRET, algorithm="HS256")
    ok = relay.peer(good)
    assert ok.session.user_id == "carol"
    assert ok.session.name == "Carol"
    for bad in (
        jwt.encode(
            {**claims, "exp": relay.wall + 5},
            "another-secret-of-32-bytes-or-more!",
            algorithm="HS256",
        ),
        jwt.encode({**claims, "exp": relay.wall - 60}, JWT_SECRET, algorithm="HS256"),
        jwt.encode({**claims, "aud": "else", "exp": relay.wall + 5}, JWT_SECRET),
        jwt.encode({**claims, "iss": "else", "exp": relay.wall + 5}, JWT_SECRET),
        jwt.encode({"sub": "carol", "iss": "https://issuer", "aud": "relay"}, JWT_SECRET),
    ):
        peer = relay.peer(auth=False)
        peer.send(AuthFrame(token=bad))
        frame = peer.take_one()
        assert isinstance(frame, AuthErrorFrame) and frame.error == "invalid_token", bad


def rsa_jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return key, {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


def test_jwks_keys_are_fetched_cached_and_a_rotation_is_picked_up() -> None:
    provider = JwtTokens(jwks_url="http://jwks.invalid/keys", algorithms=("RS256",))
    relay = WallRelay(RelayConfig(open=True, identity=(provider,)))
    key1, jwk1 = rsa_jwk("k1")
    key2, jwk2 = rsa_jwk("k2")

    def token(key: Any, kid: str, user: str) -> str:
        claims = {"sub": user, "exp": relay.wall + 60}
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    first = relay.peer(auth=False)
    first.send(AuthFrame(token=token(key1, "k1", "dave")))
    assert first.take() == []  # waits for the key set
    (fetch,) = relay.lookups
    assert fetch.kind == "jwks"
    relay.core.answer(fetch, {"k1": jwt.PyJWK(jwk1).key})
    assert isinstance(first.take_one(), AuthOkFrame)
    # Cached: no fetch for the next token signed with a known key.
    relay.peer(token(key1, "k1", "erin"))
    assert len(relay.lookups) == 1
    # Rotation: a token with a new kid asks for the key set again...
    relay.clock.advance(2)
    rotated = relay.peer(auth=False)
    rotated.send(AuthFrame(token=token(key2, "k2", "frank")))
    assert len(relay.lookups) == 2
    relay.core.answer(relay.lookups[1], {"k2": jwt.PyJWK(jwk2).key})
    assert isinstance(rotated.take_one(), AuthOkFrame)
    # ...and a kid the new set does not have either is refused after one fetch.
    relay.clock.advance(2)
    unknown = relay.peer(auth=False)
    unknown.send(AuthFrame(token=token(key1, "k9", "gina")))
    relay.core.answer(relay.lookups[2], {"k2": jwt.PyJWK(jwk2).key})
    refused = unknown.take_one()
    assert isinstance(refused, AuthErrorFrame) and refused.error == "invalid_token"
    assert len(relay.lookups) == 3


def test_a_jwks_outage_fails_closed() -> None:
    provider = JwtTokens(jwks_url="http://jwks.invalid/keys", algorithms=("RS256",))
    relay = WallRelay(RelayConfig(open=True, identity=(provider,)))
    key, _ = rsa_jwk("k1")
    peer = relay.peer(auth=False)
    peer.send(
        AuthFrame(token=jwt.encode({"sub": "x", "exp": WALL + 60}, key, "RS256", {"kid": "k1"}))
    )
    relay.core.answer(relay.lookups[0], Unavailable("down"))
    frame = peer.take_one()
    assert isinstance(frame, AuthErrorFrame) and frame.error == "auth_unavailable"
    assert peer.outbox.closed == (1008, "auth_unavailable")


def test_a_jwt_provider_without_pyjwt_is_one_clear_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "jwt", None)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    path = tmp_path / "relay.toml"
    path.write_text(f'[[identity]]\ntype = "jwt"\nsecret_file = "{secret}"\n')
    with pytest.raises(
        ConfigError, match=r"PyJWT: \.venv/bin/pip install -e \"\.\[jwt\]\" \(in the checkout\)"
    ):
        load_config(path)


# --------------------------------------------------------------------------- API tokens (look-ups)

API = UpstreamApiTokens("http://upstream.invalid/api/v1/auth/userinfo")


def test_api_tokens_wait_for_userinfo_with_their_frames_parked_in_order() -> None:
    relay = WallRelay(RelayConfig(open=True, identity=(API,)))
    watcher = relay.peer()
    watcher.join("doc")
    watcher.take()
    peer = relay.peer(auth=False)
    token = "rat_" + "a" * 64
    peer.send(AuthFrame(token=token))
    peer.join("doc")
    peer.ephemeral("doc", "hello")
    assert peer.take() == []
    (lookup,) = relay.lookups
    assert lookup == Lookup("userinfo", 0, (token,))
    relay.core.answer(lookup, Identity("alice", "Alice"))
    frames = peer.take()
    assert isinstance(frames[0], AuthOkFrame)
    assert peer.session.name == "Alice"
    assert relay.core.presence("doc") == (watcher.peer_id, peer.session.peer_id)
    assert any(isinstance(f, EphemeralFrame) for f in watcher.take())
    # Each frame counted once: when it arrived, or (parked behind the look-up) when replayed.
    assert relay.core.counters.frames_in == {"auth": 2, "ephemeral": 3}
    # Cached: the same token again asks nothing.
    relay.peer(token)
    assert len(relay.lookups) == 1


def test_one_lookup_per_token_however_many_connections_wait() -> None:
    relay = WallRelay(RelayConfig(open=True, identity=(API,)))
    token = "rat_" + "b" * 64
    peers = [relay.peer(auth=False, address=f"198.51.100.{i}") for i in range(5)]
    for peer in peers:
        peer.send(AuthFrame(token=token))
    assert len(relay.lookups) == 1
    relay.core.answer(relay.lookups[0], Refused())
    for peer in peers:
        assert isinstance(peer.take_one(), AuthErrorFrame)


def test_a_flood_of_unknown_api_tokens_costs_no_more_lookups_than_the_budget() -> None:
    relay = WallRelay(RelayConfig(open=True, identity=(API,), auth_failure_limit=5))
    for i in range(50):
        peer = relay.peer(auth=False)
        peer.send(AuthFrame(token=f"rat_{i:064x}"))
    assert len(relay.lookups) == 5
    for lookup in relay.lookups:
        relay.core.answer(lookup, Refused())
    assert relay.core.lookups_in_flight() == 0


def test_userinfo_down_fails_closed_and_is_remembered_briefly() -> None:
    relay = WallRelay(RelayConfig(open=True, identity=(API,)))
    token = "rat_" + "c" * 64
    peer = relay.peer(auth=False)
    peer.send(AuthFrame(token=token))
    relay.core.answer(relay.lookups[0], Unavailable("connection refused"))
    frame = peer.take_one()
    assert isinstance(frame, AuthErrorFrame) and frame.error == "auth_unavailable"
    again = relay.peer(auth=False, address="198.51.100.99")
    again.send(AuthFrame(token=token))
    assert isinstance(again.take_one(), AuthErrorFrame)
    assert len(relay.lookups) == 1  # the outage is cached for a second
    relay.clock.advance(1.5)
    relay.peer(auth=False, address="198.51.100.98").send(AuthFrame(token=token))
    assert len(relay.lookups) == 2


def test_a_peer_closed_while_waiting_is_forgotten() -> None:
    relay = WallRelay(RelayConfig(open=True, identity=(API,)))
    peer = relay.peer(auth=False)
    peer.send(AuthFrame(token="rat_" + "d" * 64))
    peer.close()
    relay.core.answer(relay.lookups[0], Identity("alice", "Alice"))
    assert peer.take() == []
    assert relay.core.stats().peers == 0


# --------------------------------------------------------------------------- permissions


def permission_relay(ttl: float = 10) -> WallRelay:
    return WallRelay(
        RelayConfig(
            users=USERS, permissions=HttpPermissions("http://app.invalid/permission", ttl=ttl)
        )
    )


def test_permissions_are_looked_up_cached_and_denials_refused() -> None:
    relay = permission_relay()
    alice = relay.peer("alice-secret")
    alice.take()
    alice.join("doc")
    assert alice.take() == []
    (lookup,) = relay.lookups
    assert lookup.key == ("alice", "doc")
    relay.core.answer(lookup, Access.ALLOWED)
    assert relay.core.presence("doc") == (alice.peer_id,)
    bob = relay.peer("bob-secret")
    bob.take()
    bob.join("doc")
    relay.core.answer(relay.lookups[1], Access.DENIED)
    refused = bob.take_one()
    assert isinstance(refused, ErrorFrame) and refused.error == "permission_denied"
    bob.join("doc")  # cached denial: no second look-up
    assert len(relay.lookups) == 2
    relay.peer("alice-secret").join("eph:room")  # eph: is everyone's, asked nothing
    assert len(relay.lookups) == 2


def test_a_revoked_permission_removes_the_peer_within_the_ttl() -> None:
    relay = permission_relay(ttl=5)
    alice = relay.peer("alice-secret")
    bob = relay.peer("bob-secret")
    for peer in (alice, bob):
        peer.take()
        peer.join("doc")
        relay.core.answer(relay.lookups[-1], Access.ALLOWED)
    alice.take()
    bob.take()
    relay.clock.advance(5.5)
    relay.core.on_timer()
    stale = [lookup for lookup in relay.lookups[2:] if lookup.kind == "permission"]
    assert {lookup.key for lookup in stale} == {("alice", "doc"), ("bob", "doc")}
    for lookup in stale:
        relay.core.answer(lookup, Access.DENIED if lookup.key[0] == "bob" else Access.ALLOWED)
    told = bob.take()
    assert any(isinstance(f, ErrorFrame) and f.error == "permission_revoked" for f in told)
    assert relay.core.presence("doc") == (alice.peer_id,)
    assert any(type(f).__name__ == "PeerLeftDocFrame" for f in alice.take())


def test_a_permission_outage_fails_closed_for_newcomers() -> None:
    relay = permission_relay()
    alice = relay.peer("alice-secret")
    alice.take()
    alice.join("doc")
    relay.core.answer(relay.lookups[0], Unavailable("down"))
    frame = alice.take_one()
    assert isinstance(frame, ErrorFrame) and frame.error == "permission_unavailable"
    assert relay.core.presence("doc") == ()


# --------------------------------------------------------------------------- upstream's rules


@pytest.fixture
def upstream(tmp_path: Path) -> UpstreamDb:
    db = UpstreamDb(tmp_path / "ratatoskr.db")
    for user in ("owner", "reader", "writer", "stranger"):
        db.user(user)
    yield db
    db.close()


class Reader:
    def __init__(self, path: Path) -> None:
        from ratatoskr_client.server.asyncio.lookups import SqliteReader

        self.reader = SqliteReader(str(path))

    def __call__(self, doc: str, user: str | None) -> Access:
        return upstream_access(self.reader, doc, user)


def test_upstream_owner_reads_others_do_not(upstream: UpstreamDb) -> None:
    upstream.document("doc:private", "owner", automerge_id="AmPrivate")
    read = Reader(upstream.path)
    for doc in ("doc:private", "AmPrivate"):
        assert read(doc, "owner") is Access.ALLOWED
        assert read(doc, "stranger") is Access.DENIED
        assert read(doc, None) is Access.DENIED


def test_upstream_public_entries_let_everyone_in(upstream: UpstreamDb) -> None:
    upstream.document("doc:pub", "owner", automerge_id="AmPub", acl=(("public", "read"),))
    read = Reader(upstream.path)
    assert read("AmPub", None) is Access.ALLOWED
    assert read("AmPub", "stranger") is Access.ALLOWED


def test_upstream_user_entries_read_and_write(upstream: UpstreamDb) -> None:
    upstream.document(
        "doc:shared",
        "owner",
        automerge_id="AmShared",
        acl=(("reader", "read"), ("writer", "write")),
    )
    read = Reader(upstream.path)
    assert read("AmShared", "reader") is Access.ALLOWED
    assert read("AmShared", "writer") is Access.ALLOWED
    assert read("AmShared", "stranger") is Access.DENIED


def test_upstream_document_references_recurse_with_a_cycle_guard(upstream: UpstreamDb) -> None:
    # doc:team grants reader; doc:project grants whoever reads doc:team (by
    # its automerge id); doc:a and doc:b reference each other (a cycle).
    upstream.document("doc:team", "owner", automerge_id="AmTeam", acl=(("reader", "read"),))
    upstream.document("doc:project", "owner", automerge_id="AmProject", acl=(("AmTeam", "read"),))
    upstream.document("doc:a", "owner", automerge_id="AmA", acl=(("doc:b", "read"),))
    upstream.document("doc:b", "owner", automerge_id="AmB", acl=(("doc:a", "read"),))
    read = Reader(upstream.path)
    assert read("AmProject", "reader") is Access.ALLOWED
    assert read("AmProject", "stranger") is Access.DENIED
    assert read("AmA", "stranger") is Access.DENIED  # terminates
    assert read("AmA", "owner") is Access.ALLOWED


def test_upstream_references_stop_after_ten_levels(upstream: UpstreamDb) -> None:
    upstream.document("doc:l0", "owner", acl=(("reader", "read"),))
    for i in range(1, 13):
        upstream.document(f"doc:l{i}", "owner", acl=((f"doc:l{i - 1}", "read"),))
    read = Reader(upstream.path)
    assert read("doc:l10", "reader") is Access.ALLOWED  # 10 levels of references
    assert read("doc:l11", "reader") is Access.DENIED


def test_upstream_eph_and_app_documents(upstream: UpstreamDb) -> None:
    upstream.document("app:settings", "owner", acl=(("public", "read"),))
    upstream.document(
        "doc:typed", "owner", automerge_id="AmTyped", type="app:notes", acl=(("public", "read"),)
    )
    read = Reader(upstream.path)
    assert read("eph:anything", None) is Access.ALLOWED
    assert read("app:settings", "owner") is Access.ALLOWED
    assert read("app:settings", "stranger") is Access.DENIED
    assert read("AmTyped", "owner") is Access.ALLOWED
    assert read("AmTyped", "stranger") is Access.DENIED
    assert read("AmTyped", None) is Access.DENIED


def test_upstream_unknown_documents_are_not_found(upstream: UpstreamDb) -> None:
    read = Reader(upstream.path)
    assert read("AmNowhere", "owner") is Access.NOT_FOUND


def test_the_database_is_opened_read_only(upstream: UpstreamDb) -> None:
    from ratatoskr_client.server.asyncio.lookups import SqliteReader

    reader = SqliteReader(str(upstream.path))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._db.execute("DELETE FROM documents")
    reader.close()


def test_config_files_name_providers_and_secrets_never_show(tmp_path: Path) -> None:
    secret = tmp_path / "jwt_secret"
    secret.write_text(SECRET + "\n")
    db = tmp_path / "ratatoskr.db"
    path = tmp_path / "relay.toml"
    path.write_text(
        f"""
reauth_grace = 4
[[identity]]
type = "upstream-session"
secret_file = "{secret}"
[[identity]]
type = "upstream-api-token"
userinfo_url = "http://127.0.0.1:4151/api/v1/auth/userinfo"
[permissions]
type = "upstream-database"
database = "{db}"
ttl = 3
"""
    )
    config = load_config(path)
    assert config.identity == (
        UpstreamSessionTokens(SECRET),
        UpstreamApiTokens("http://127.0.0.1:4151/api/v1/auth/userinfo"),
    )
    assert config.permissions == UpstreamDatabase(str(db), ttl=3)
    assert config.reauth_grace == 4
    assert SECRET not in repr(config)
    path.write_text('[[identity]]\ntype = "upstream-session"\nsecret_env = "NOT_SET_ANYWHERE_42"\n')
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE_42"):
        load_config(path)
    path.write_text('[[identity]]\ntype = "ldap"\n')
    with pytest.raises(ConfigError, match="unknown identity type"):
        load_config(path)


def test_jwt_providers_are_told_apart_by_issuer() -> None:
    first = JwtTokens(secret=JWT_SECRET, issuer="https://one")
    second = JwtTokens(secret="another-secret-of-32-bytes-or-more!", issuer="https://two")
    relay = WallRelay(RelayConfig(open=True, identity=(first, second)))
    one = jwt.encode({"sub": "a", "iss": "https://one", "exp": WALL + 60}, JWT_SECRET)
    two = jwt.encode(
        {"sub": "b", "iss": "https://two", "exp": WALL + 60}, "another-secret-of-32-bytes-or-more!"
    )
    assert relay.peer(one).session.user_id == "a"
    assert relay.peer(two).session.user_id == "b"
    stranger = relay.peer(auth=False)
    stranger.send(
        AuthFrame(token=jwt.encode({"sub": "c", "iss": "https://x", "exp": WALL + 60}, "k" * 32))
    )
    assert isinstance(stranger.take_one(), AuthErrorFrame)
