"""The public surface: __all__ lists, the exception tree, URLs, argument checks."""

from __future__ import annotations

import importlib
import inspect
import re
import types

import pytest

import ratatoskr_client
import ratatoskr_client.errors as errors_module
from ratatoskr_client import Peer, RatatoskrClient, RatatoskrError, errors
from ratatoskr_client.core.settings import socket_url as _socket_url

PUBLIC_MODULES = [
    "ratatoskr_client",
    "ratatoskr_client.errors",
    "ratatoskr_client.protocol",
    "ratatoskr_client.server",
]


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user can see on ``module`` (``dir()``: those loaded on first use
    too): not private, not a submodule, not a ``from __future__`` feature."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(value := getattr(module, name), types.ModuleType)
        and type(value).__module__ != "__future__"
    }


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    assert set(exported) - {"__version__"} == public_names(module)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_is_importable(name):
    module = importlib.import_module(name)
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    for item in module.__all__:
        assert item in namespace, item
        assert namespace[item] is getattr(module, item)


def test_the_issue_names_are_at_the_top_level():
    for name in ("RatatoskrClient", "Peer", "RatatoskrError", "AuthError", "PermissionDenied"):
        assert name in ratatoskr_client.__all__
    for name in ("DocumentNotFound", "RateLimited", "ProtocolError", "ConnectionClosed"):
        assert name in ratatoskr_client.__all__
    assert isinstance(ratatoskr_client.__version__, str)


def test_every_exception_is_re_exported_at_the_top_level():
    for name in errors_module.__all__:
        if name != "error_from_frame":
            assert getattr(ratatoskr_client, name) is getattr(errors_module, name)


# --------------------------------------------------------------------------- exception tree


def parse_tree(doc: str) -> tuple[dict[str, str | None], dict[str, list[str]]]:
    """Parent of every class in the docstring's tree, and its "(also X)" notes."""
    lines = [ln for ln in doc.splitlines() if re.match(r"^\s{4}(?:[│ ]{4})*(?:[├└]── )?\w+", ln)]
    parents: dict[str, str | None] = {}
    extra: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        match = re.match(r"^(\s*(?:[│ ]   )*)(?:[├└]── )?(\w+)\s*(.*)$", line)
        assert match, line
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        name = match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
        extra[name] = re.findall(r"\(also (\w+)\)", match.group(3))
    return parents, extra


def test_the_documented_exception_tree_is_the_real_hierarchy():
    doc = errors_module.__doc__
    assert doc is not None
    tree = doc.split("The tree::", 1)[1].split("\n\n", 2)[1]
    parents, extra = parse_tree(tree)
    assert parents["RatatoskrError"] is None
    documented = set(parents)
    real = {
        name
        for name, cls in vars(errors_module).items()
        if inspect.isclass(cls) and issubclass(cls, RatatoskrError)
    }
    assert documented == real
    builtins_ = {"ValueError": ValueError, "TimeoutError": TimeoutError}
    for name, parent in parents.items():
        cls = getattr(errors, name)
        if parent is None:
            assert cls.__bases__ == (Exception,)
            continue
        ratatoskr_bases = [b for b in cls.__bases__ if issubclass(b, RatatoskrError)]
        assert ratatoskr_bases == [getattr(errors, parent)], name
        other_bases = [b for b in cls.__bases__ if not issubclass(b, RatatoskrError)]
        assert other_bases == [builtins_[x] for x in extra[name]], name


def test_permission_denied_carries_the_document_and_rate_limited_the_delay():
    denied = errors.error_from_frame("permission_denied", "no", document_id="doc-1")
    assert isinstance(denied, errors.PermissionDenied)
    assert denied.document_id == "doc-1"
    assert denied.code == "permission_denied"
    limited = errors.error_from_frame("rate_limited", "slow down", retry_after=1.5)
    assert isinstance(limited, errors.RateLimited)
    assert limited.retry_after == 1.5
    assert isinstance(errors.error_from_frame("document_not_found"), errors.DocumentNotFound)
    for code in ("invalid_token", "missing_credentials", "auth_timeout"):
        assert isinstance(errors.error_from_frame(code), errors.AuthError)
    unknown = errors.error_from_frame("brand_new_code", "from the future")
    assert type(unknown) is errors.ServerError
    assert unknown.code == "brand_new_code"


def test_timeouts_and_payload_errors_are_also_builtin_errors():
    assert issubclass(errors.OperationTimeout, TimeoutError)
    assert issubclass(errors.PayloadError, ValueError)


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost:4151", "ws://localhost:4151/sync"),
        ("http://localhost:4151/", "ws://localhost:4151/sync"),
        ("https://relay.example.com", "wss://relay.example.com/sync"),
        ("ws://127.0.0.1:9/sync", "ws://127.0.0.1:9/sync"),
        ("wss://relay.example.com/sync/", "wss://relay.example.com/sync"),
        ("HTTPS://relay.example.com/base", "wss://relay.example.com/base/sync"),
        ("http://[::1]:4151", "ws://[::1]:4151/sync"),
        ("http://h/base?x=1", "ws://h/base/sync?x=1"),
    ],
)
def test_urls_are_normalised_to_the_sync_socket(url, expected):
    assert _socket_url(url) == expected
    client = RatatoskrClient(url)
    assert client.url == url
    assert expected in repr(client)


@pytest.mark.parametrize("url", ["ftp://h", "localhost:4151", "http://", "", "//h/sync", "h"])
def test_bad_urls_are_rejected(url):
    with pytest.raises(ValueError, match="URL"):
        RatatoskrClient(url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:4151", "got 'localhost:4151' (did you mean 'http://localhost:4151'?)"),
        ("relay.example.com/base", "(did you mean 'http://relay.example.com/base'?)"),
    ],
)
def test_a_url_without_a_scheme_gets_the_hint_the_cli_gives(url, says):
    with pytest.raises(ValueError, match="URL") as info:
        RatatoskrClient(url)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_a_url_with_another_scheme_gets_no_http_hint():
    with pytest.raises(ValueError, match="URL") as info:
        RatatoskrClient("ftp://h")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heartbeat_interval": 0},
        {"heartbeat_interval": -1},
        {"rate_limit": 0},
        {"request_timeout": 0},
        {"heartbeat_interval": float("nan")},
    ],
)
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RatatoskrClient("http://localhost:4151", **kwargs)


def test_bad_event_names_are_rejected():
    client = RatatoskrClient("http://localhost:4151")
    for method in (client.on, client.once):
        with pytest.raises(ValueError, match="presence_changed"):
            method("presence_changed", print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown event"):
        client.off("message", print)  # type: ignore[arg-type]


def test_sidecar_ids():
    assert RatatoskrClient.sidecar("doc-123", "chat") == "eph:chat-doc-123"
    assert ratatoskr_client.sidecar_id("doc-123", "cursors") == "eph:cursors-doc-123"
    with pytest.raises(ValueError, match="channel"):
        RatatoskrClient.sidecar("doc-123", "")


def test_a_fresh_client_is_idle_and_has_no_identity():
    client = RatatoskrClient("http://localhost:4151")
    assert client.connection_state is ratatoskr_client.ConnectionState.IDLE
    assert not client.is_connected
    assert dict(client.peers) == {}
    assert client.presence("doc") == ()
    assert client.entered_documents == ()
    # Reading the identity before connecting is a usage error, and says what to do.
    with pytest.raises(RuntimeError, match=r"connect\(\)"):
        _ = client.me


def test_peer_fields():
    assert list(Peer.__dataclass_fields__) == [
        "peer_id",
        "user_id",
        "name",
        "is_anonymous",
        "chosen_name",
        "is_server",
    ]
    # The name a peer chose for itself is not part of its identity.
    assert Peer("p", None, "Neon Narwhal", True, "alpha") == Peer("p", None, "Neon Narwhal", True)


def test_display_name_is_the_chosen_name_else_the_servers():
    from ratatoskr_client import Peer

    assert Peer("p1", "alice", "Alice", False).display_name == "Alice"
    assert Peer("p2", None, "Gentle Jackal", True, "alpha").display_name == "alpha"
    assert Peer("p3", None, "Gentle Jackal", True, "").display_name == "Gentle Jackal"


def test_connection_errors_give_the_systems_reason_in_words():
    import errno
    import socket as socket_module
    import ssl

    from ratatoskr_client.asyncio.socket import os_reason

    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)")
    assert os_reason(refused) == "connection refused"
    unknown = socket_module.gaierror(-2, "Name or service not known")
    assert os_reason(unknown) == "cannot resolve the host name (name or service not known)"
    handshake = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    handshake.reason = "WRONG_VERSION_NUMBER"
    assert os_reason(handshake) == "the TLS handshake failed (WRONG_VERSION_NUMBER)"
