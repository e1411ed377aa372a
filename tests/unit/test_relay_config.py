"""The relay's TOML configuration and ACL (``ratatoskr_client.server.config``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ratatoskr_client.errors import ConfigError
from ratatoskr_client.server import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_MAX_DOCUMENTS_PER_PEER,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_PRESENCE_TTL,
    DEFAULT_RATE_LIMIT,
    Access,
    AclEntry,
    DocumentSpec,
    RelayConfig,
    UserSpec,
    load_config,
)

ISSUE_EXAMPLE = """
[[users]]
token = "alice-secret"
id = "alice"
name = "Alice"

[[documents]]
id = "doc-123"
owner = "alice"
acl = [{ principal = "bob", permission = "read" }, { principal = "public", permission = "read" }]
"""

USERS = """
[[users]]
token = "alice-secret"
id = "alice"
name = "Alice"

[[users]]
token = "bob-secret"
id = "bob"
name = "Bob"

[[users]]
token = "carol-secret"
id = "carol"
"""


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message, "the message must name the file"
    assert info.value.path == str(path)
    return message


# --------------------------------------------------------------------------- good files


def test_issue_example(tmp_path: Path) -> None:
    # The issue's example, with bob defined so that his ACL entry is valid.
    text = ISSUE_EXAMPLE.replace(
        "[[documents]]", '[[users]]\ntoken = "bob-secret"\nid = "bob"\n\n[[documents]]'
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.users == (
        UserSpec(token="alice-secret", id="alice", name="Alice"),
        UserSpec(token="bob-secret", id="bob", name="bob"),  # name defaults to the id
    )
    assert cfg.documents == (
        DocumentSpec(
            id="doc-123",
            owner="alice",
            acl=(AclEntry("bob", "read"), AclEntry("public", "read")),
        ),
    )
    assert cfg.open is False
    assert cfg.source == str(tmp_path / "relay.toml")
    assert cfg.user_for_token("alice-secret") == cfg.users[0]
    assert cfg.user_for_token("bob-secret") == cfg.users[1]
    assert cfg.user_for_token("nobody") is None
    # public: everyone reads it, anonymous (None) included
    for who in ("alice", "bob", "someone-else", None):
        assert cfg.access(who, "doc-123") is Access.ALLOWED
    assert cfg.access("alice", "doc-999") is Access.NOT_FOUND
    assert cfg.access(None, "eph:chat-doc-123") is Access.ALLOWED


def test_issue_example_without_bob_names_the_principal(tmp_path: Path) -> None:
    # Verbatim, the issue's example grants "bob", who is not a user in that file.
    path = write(tmp_path, ISSUE_EXAMPLE)
    message = config_error(path)
    assert "documents[0] (id 'doc-123').acl[0]" in message
    assert "principal 'bob'" in message


def test_owner_read_write_semantics(tmp_path: Path) -> None:
    text = (
        USERS
        + """
[[documents]]
id = "owned"
owner = "alice"

[[documents]]
id = "shared"
owner = "alice"
acl = [{ principal = "bob", permission = "write" }]

[[documents]]
id = "read-only"
owner = "alice"
acl = [{ principal = "bob" }]

[[documents]]
id = "ownerless"
acl = [{ principal = "carol", permission = "read" }]

[[documents]]
id = "locked"
"""
    )
    cfg = load_config(write(tmp_path, text))
    expected = {
        # document: (alice, bob, carol, anonymous)
        "owned": ("ALLOWED", "DENIED", "DENIED", "DENIED"),
        "shared": ("ALLOWED", "ALLOWED", "DENIED", "DENIED"),  # write implies read
        "read-only": ("ALLOWED", "ALLOWED", "DENIED", "DENIED"),  # permission defaults to read
        "ownerless": ("DENIED", "DENIED", "ALLOWED", "DENIED"),
        "locked": ("DENIED", "DENIED", "DENIED", "DENIED"),
        "missing": ("NOT_FOUND", "NOT_FOUND", "NOT_FOUND", "NOT_FOUND"),
        "eph:cursor-owned": ("ALLOWED", "ALLOWED", "ALLOWED", "ALLOWED"),
    }
    for doc, answers in expected.items():
        got = tuple(cfg.access(who, doc).name for who in ("alice", "bob", "carol", None))
        assert got == answers, doc
    assert cfg.documents[2].acl == (AclEntry("bob", "read"),)


def test_defaults_from_an_empty_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert (cfg.host, cfg.port) == ("127.0.0.1", DEFAULT_PORT)
    assert cfg.users == ()
    assert cfg.documents == ()
    assert cfg.open is False
    assert cfg.presence_ttl == DEFAULT_PRESENCE_TTL == 90.0
    assert cfg.rate_limit == DEFAULT_RATE_LIMIT == 600
    assert cfg.auth_timeout == DEFAULT_AUTH_TIMEOUT == 10.0
    assert cfg.max_frame_size == DEFAULT_MAX_FRAME_SIZE == 65536
    assert cfg.max_documents_per_peer == DEFAULT_MAX_DOCUMENTS_PER_PEER == 1000
    assert cfg.ping_interval == DEFAULT_PING_INTERVAL == 30.0
    assert DEFAULT_PORT == 4151
    assert cfg.access(None, "anything") is Access.NOT_FOUND


def test_top_level_settings_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
open = true
presence_ttl = 5
rate_limit = 30
auth_timeout = 2.5
max_frame_size = 4096
max_documents_per_peer = 7
ping_interval = 12
""",
    )
    cfg = load_config(path)
    assert cfg.open is True
    assert cfg.presence_ttl == 5
    assert cfg.rate_limit == 30
    assert cfg.auth_timeout == 2.5
    assert cfg.max_frame_size == 4096
    assert cfg.max_documents_per_peer == 7
    assert cfg.ping_interval == 12
    # Overrides win, the way CLI flags do.
    over = load_config(path, port=0, host="::1", presence_ttl=0.5, rate_limit=2)
    assert (over.host, over.port, over.presence_ttl, over.rate_limit) == ("::1", 0, 0.5, 2)
    assert over.max_documents_per_peer == 7


def test_open_mode(tmp_path: Path) -> None:
    # `open` is a top-level key, so it comes before the first table.
    text = "open = true\n" + USERS + '\n[[documents]]\nid = "private"\nowner = "alice"\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.open is True
    # Unlisted documents exist and are readable by every peer...
    assert cfg.access(None, "anything") is Access.ALLOWED
    assert cfg.access("bob", "anything") is Access.ALLOWED
    # ...but listed ones keep their ACL.
    assert cfg.access("alice", "private") is Access.ALLOWED
    assert cfg.access("bob", "private") is Access.DENIED
    assert cfg.access(None, "private") is Access.DENIED


def test_open_mode_in_code() -> None:
    assert RelayConfig(open=True).access(None, "x") is Access.ALLOWED
    assert RelayConfig().access(None, "x") is Access.NOT_FOUND
    assert RelayConfig().access(None, "eph:x") is Access.ALLOWED


def test_with_revalidates() -> None:
    cfg = RelayConfig(open=True)
    assert cfg.with_(presence_ttl=1).presence_ttl == 1
    with pytest.raises(ConfigError, match="presence_ttl must be a positive number"):
        cfg.with_(presence_ttl=0)


# --------------------------------------------------------------------------- bad files


DOC_9 = (
    USERS
    + """
[[documents]]
id = "doc-1"
owner = "alice"

[[documents]]
id = "doc-9"
owner = "{owner}"
acl = [{{ principal = "{principal}", permission = "{permission}" }}]
"""
)


def doc9(owner: str = "alice", principal: str = "bob", permission: str = "read") -> str:
    return DOC_9.format(owner=owner, principal=principal, permission=permission)


def test_doc9_template_is_valid(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, doc9()))
    assert cfg.access("bob", "doc-9") is Access.ALLOWED


@pytest.mark.parametrize(
    ("text", "entry", "problem"),
    [
        (doc9(owner="dave"), "documents[1] (id 'doc-9')", "owner 'dave' is not a user"),
        (
            doc9(principal="dave"),
            "documents[1] (id 'doc-9').acl[0]",
            "principal 'dave' is neither 'public' nor a user",
        ),
        (
            doc9(permission="admin"),
            "documents[1] (id 'doc-9').acl[0]",
            "permission must be 'read' or 'write', got 'admin'",
        ),
        (
            doc9().replace('id = "doc-9"', 'id = "doc-1"'),
            "documents[1] (id 'doc-1')",
            "duplicate document id 'doc-1'",
        ),
        (
            doc9().replace('id = "doc-9"', 'id = "eph:chat-doc-1"'),
            "documents[1] (id 'eph:chat-doc-1')",
            "'eph:' are public relay channels",
        ),
        (
            doc9().replace('id = "doc-9"', 'id = ""'),
            "documents[1] (id '')",
            "'id' must be a non-empty string",
        ),
        (
            USERS.replace('token = "bob-secret"', 'token = "alice-secret"'),
            "users[1] (id 'bob')",
            "token is already used by another user",
        ),
        (
            USERS.replace('id = "carol"', 'id = "alice"'),
            "users[2] (id 'alice')",
            "duplicate user id 'alice'",
        ),
        (
            USERS.replace('id = "carol"', 'id = "public"'),
            "users[2] (id 'public')",
            "reserved for the public ACL principal",
        ),
        (
            USERS.replace('token = "carol-secret"', 'token = " "'),
            "users[2] (id 'carol')",
            "'token' must be a non-empty string",
        ),
        (
            USERS.replace('token = "carol-secret"', ""),
            "users[2] (id 'carol')",
            "missing required key 'token'",
        ),
        (
            USERS.replace('id = "carol"', ""),
            "users[2]",
            "missing required key 'id'",
        ),
        (
            USERS.replace('id = "carol"', "id = 3"),
            "users[2]",
            "'id' must be a string, got int",
        ),
        (
            USERS.replace('name = "Bob"', "name = true"),
            "users[1] (id 'bob')",
            "'name' must be a string, got bool",
        ),
        (
            USERS + '\n[[documents]]\nid = "d"\nowner = 5\n',
            "documents[0] (id 'd')",
            "'owner' must be a string, got int",
        ),
        (
            USERS + "\n[[documents]]\nowner = 'alice'\n",
            "documents[0]",
            "missing required key 'id'",
        ),
        (
            USERS + '\n[[documents]]\nid = "d"\nacl = "public"\n',
            "documents[0] (id 'd')",
            "'acl' must be an array of tables",
        ),
        (
            USERS + '\n[[documents]]\nid = "d"\nacl = ["public"]\n',
            "documents[0] (id 'd').acl[0]",
            "must be a table like",
        ),
        (
            USERS + '\n[[documents]]\nid = "d"\nacl = [{ permission = "read" }]\n',
            "documents[0] (id 'd').acl[0]",
            "missing required key 'principal'",
        ),
        (
            USERS + '\n[[documents]]\nid = "d"\nacl = [{ principal = "bob", role = "x" }]\n',
            "documents[0] (id 'd').acl[0]",
            "unknown key(s) 'role'",
        ),
        (
            USERS + '\n[[documents]]\nid = "d"\nreaders = ["bob"]\n',
            "documents[0]",
            "unknown key(s) 'readers'",
        ),
        (
            USERS.replace('name = "Bob"', 'name = "Bob"\npassword = "x"'),
            "users[1]",
            "unknown key(s) 'password'",
        ),
        ("port = 80\nttl = 5\n", "top level", "unknown key(s) 'port', 'ttl'"),
        ('presence_ttl = "fast"\n', "top level", "'presence_ttl' has the wrong type (str)"),
        ("rate_limit = 1.5\n", "top level", "'rate_limit' has the wrong type (float)"),
        ("rate_limit = true\n", "top level", "'rate_limit' has the wrong type (bool)"),
        ('open = "yes"\n', "top level", "'open' has the wrong type (str)"),
    ],
)
def test_bad_files_name_file_entry_and_problem(
    tmp_path: Path, text: str, entry: str, problem: str
) -> None:
    message = config_error(write(tmp_path, text))
    assert entry in message
    assert problem in message
    # The message reads "file: entry: problem".
    assert message.startswith(f"{tmp_path / 'relay.toml'}: ")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('users = "alice"\n', "'users' must be an array of tables ([[users]])"),
        ("documents = [1, 2]\n", "'documents' must be an array of tables ([[documents]])"),
        ("[users]\nid = 'x'\n", "'users' must be an array of tables"),
    ],
)
def test_bad_table_shapes(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in config_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("presence_ttl = 0\n", "presence_ttl must be a positive number, got 0"),
        ("presence_ttl = -1.5\n", "presence_ttl must be a positive number, got -1.5"),
        ("presence_ttl = inf\n", "presence_ttl must be a positive number, got inf"),
        ("presence_ttl = nan\n", "presence_ttl must be a positive number, got nan"),
        ("rate_limit = 0\n", "rate_limit must be a positive integer, got 0"),
        ("rate_limit = -10\n", "rate_limit must be a positive integer, got -10"),
        ("auth_timeout = 0\n", "auth_timeout must be a positive number, got 0"),
        ("max_frame_size = 0\n", "max_frame_size must be a positive integer, got 0"),
        (
            "max_documents_per_peer = -1\n",
            "max_documents_per_peer must be a positive integer, got -1",
        ),
        ("ping_interval = 0.0\n", "ping_interval must be a positive number, got 0.0"),
    ],
)
def test_non_positive_numbers(tmp_path: Path, text: str, problem: str) -> None:
    key = text.split()[0]
    message = config_error(write(tmp_path, text))
    assert problem in message
    assert key in message


def test_bad_toml(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, '[[users]]\ntoken = "unterminated\n'))
    assert "not valid TOML" in message
    assert "line 2" in message


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"\xff\xfe x", "byte 0xff at line 1, column 1"),  # UTF-16's byte order mark
        (b'open = true\nname = "caf\xe9"\n', "byte 0xe9 at line 2, column 12"),  # Latin-1
    ],
)
def test_file_that_is_not_utf8(tmp_path: Path, data: bytes, where: str) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.problem == f"not UTF-8 text (TOML files must be UTF-8): {where}"
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_missing_file(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.toml")
    assert "cannot read file" in message
    assert "No such file" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "cannot read file" in config_error(tmp_path)


def test_error_attributes(tmp_path: Path) -> None:
    path = write(tmp_path, doc9(owner="dave"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.entry == "documents[1] (id 'doc-9')"
    assert info.value.problem == "owner 'dave' is not a user defined in [[users]]"
    assert str(info.value) == f"{path}: documents[1] (id 'doc-9'): {info.value.problem}"


def test_bad_override_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match="rate_limit must be a positive integer"):
        load_config(path, rate_limit=0)
    with pytest.raises(ConfigError, match="port must be an integer from 0 to 65535"):
        load_config(path, port=70000)


def test_config_built_in_code_is_validated() -> None:
    alice = UserSpec("t", "alice", "Alice")
    with pytest.raises(ConfigError, match=r"documents\[0\] \(id 'd'\): owner 'bob'"):
        RelayConfig(users=(alice,), documents=(DocumentSpec("d", owner="bob"),))
    bad_acl = (AclEntry("alice", "own"),)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"documents\[0\] \(id 'd'\)\.acl\[0\]: permission"):
        RelayConfig(users=(alice,), documents=(DocumentSpec("d", acl=bad_acl),))
    # Any iterable is accepted, and stored as a tuple.
    cfg = RelayConfig(
        users=[alice],  # type: ignore[arg-type]
        documents=iter([DocumentSpec("d", acl=(AclEntry("public"),))]),  # type: ignore[arg-type]
    )
    assert isinstance(cfg.users, tuple)
    assert isinstance(cfg.documents, tuple)
    assert cfg.access(None, "d") is Access.ALLOWED


# --------------------------------------------------------------------------- docs


def test_the_example_in_docs_server_md_is_valid(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "server.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    # The first is the example of every setting; the others are the
    # deployments of "Identities and permissions" (checked below).
    assert blocks and "[[users]]" in blocks[0]
    cfg = load_config(write(tmp_path, blocks[0]))
    # The settings it shows are documented as the defaults.
    assert cfg == RelayConfig(users=cfg.users, documents=cfg.documents)
    assert cfg.users[1] == UserSpec("bob-secret", "bob", "bob")
    assert cfg.access(None, "doc-123") is Access.ALLOWED
    assert cfg.access("bob", "design-notes") is Access.ALLOWED
    assert cfg.access(None, "design-notes") is Access.DENIED


def test_the_deployments_in_docs_server_md_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "server.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)[1:]
    assert len(blocks) == 3  # beside upstream, HS256, JWKS + callback
    secret = tmp_path / "jwt_secret"
    secret.write_text("a-secret-of-at-least-32-bytes-long!!\n")
    monkeypatch.setenv("RELAY_JWT_SECRET", "a-secret-of-at-least-32-bytes-long!!")
    kinds = []
    for block in blocks:
        text = block.replace("/etc/ratatoskr/jwt_secret", str(secret))
        cfg = load_config(write(tmp_path, text))
        kinds.append(
            (
                [type(p).__name__ for p in cfg.identity],
                type(cfg.permissions).__name__ if cfg.permissions else None,
            )
        )
        assert "a-secret" not in repr(cfg)
    assert kinds == [
        (["UpstreamSessionTokens", "UpstreamApiTokens"], "UpstreamDatabase"),
        (["JwtTokens"], None),
        (["JwtTokens"], "HttpPermissions"),
    ]


def test_identity_scope_and_connection_limit_settings(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.identity_scope == "document"
    assert cfg.anonymous_connection_limit == 60
    assert cfg.connection_limit_exempt == ("127.0.0.0/8", "::1/128")
    assert not cfg.connection_limited("127.0.0.1") and not cfg.connection_limited("::1")
    assert cfg.connection_limited("203.0.113.9")
    path = write(
        tmp_path,
        """
identity_scope = "global"
anonymous_connection_limit = 5
connection_limit_exempt = ["10.0.0.0/8", "2001:db8::/32"]
""",
    )
    cfg = load_config(path)
    assert cfg.identity_scope == "global"
    assert cfg.anonymous_connection_limit == 5
    assert cfg.connection_limit_exempt == ("10.0.0.0/8", "2001:db8::/32")
    assert not cfg.connection_limited("10.9.8.7")
    assert not cfg.connection_limited("2001:db8::1")
    assert cfg.connection_limited("127.0.0.1")  # replaced, not added to
    assert not cfg.connection_limited("")  # not an IP address: nobody to limit
    assert load_config(path, identity_scope="document").identity_scope == "document"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('identity_scope = "everyone"', "identity_scope must be 'document' or 'global'"),
        ("identity_scope = 1", "'identity_scope' has the wrong type"),
        ("anonymous_connection_limit = 0", "anonymous_connection_limit must be a positive"),
        ('connection_limit_exempt = ["nonsense"]', "'nonsense' is not a network"),
        ('connection_limit_exempt = "127.0.0.0/8"', "'connection_limit_exempt' has the wrong type"),
    ],
)
def test_bad_scope_and_limit_settings(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(write(tmp_path, text))
