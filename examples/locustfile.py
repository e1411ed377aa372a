"""Load test: participants spread over documents, moving cursors, reacting, hopping.

Each simulated user connects, enters one of ``--documents`` documents, and
then, several times a second, moves its cursor (``set_state``); now and then
it sends a reaction (``send_ephemeral``), and every ``--stay`` seconds on
average it leaves its document for another one. Start a relay, then Locust:

    ratatoskr relay &
    locust -f examples/locustfile.py --host http://127.0.0.1:4151 \\
        --headless --users 200 --spawn-rate 50 --run-time 60s --documents 20

Against the upstream Ratatoskr server, documents must be real (automerge ids
it knows) and users need tokens (it allows 5 anonymous connections a minute
per address): give ids with ``--document-ids`` or have the file create public
documents through its REST API with ``--create-documents N --api-token T``,
and one token per line in ``--tokens-file``, which users take in turn:

    locust -f examples/locustfile.py --host http://127.0.0.1:3000 \
        --headless --users 50 --spawn-rate 10 --run-time 60s \
        --create-documents 5 --api-token "$OWNER_TOKEN" --tokens-file tokens.txt

Every option below also appears in Locust's web UI. See docs/load-testing.md.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from locust import constant_pacing, events, task

from ratatoskr_client.locust import RatatoskrUser

REACTIONS = ["🎉", "👍", "👀", "❤️", "🚀"]


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("ratatoskr participants")
    group.add_argument(
        "--documents", type=int, default=10, help="documents the users spread over (10)"
    )
    group.add_argument(
        "--document-prefix",
        default="load-",
        help="document ids are PREFIX0, PREFIX1, ... ('load-'); they must exist on the server",
    )
    group.add_argument(
        "--document-ids",
        default="",
        help="comma-separated document ids to spread over instead of PREFIX0... (e.g. "
        "automerge ids the upstream server knows)",
    )
    group.add_argument(
        "--create-documents",
        type=int,
        default=0,
        help="create this many public documents at start through the server's REST API "
        "(POST /api/v1/documents, upstream's) with --api-token, and spread over them (0)",
    )
    group.add_argument("--api-token", default="", help="bearer token that creates the documents")
    group.add_argument(
        "--api-url", default="", help="where the REST API is (default: --host, over http)"
    )
    group.add_argument(
        "--tokens-file",
        default="",
        help="a file with one token per line; users take them in turn (default: anonymous)",
    )
    group.add_argument(
        "--cursor-rate", type=float, default=2.0, help="cursor moves per second per user (2)"
    )
    group.add_argument(
        "--reactions-per-minute", type=float, default=6.0, help="reactions per user (6)"
    )
    group.add_argument(
        "--stay",
        type=float,
        default=30.0,
        help="mean seconds in a document before moving to another; 0: never move (30)",
    )


_lock = threading.Lock()
_documents: list[str] = []
_tokens: Iterator[str] | None = None


def create_documents(host: str, token: str, count: int) -> list[str]:
    """Create ``count`` publicly readable documents through the upstream
    server's REST API; returns their ids."""
    base = host.replace("ws://", "http://").replace("wss://", "https://").rstrip("/")
    if base.endswith("/sync"):
        base = base[: -len("/sync")]
    ids = []
    for _ in range(count):
        request = urllib.request.Request(
            f"{base}/api/v1/documents",
            data=json.dumps({"acl": [{"principal": "public", "permission": "read"}]}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            ids.append(json.load(answer)["id"])
    return ids


def documents(options: Any, host: str) -> list[str]:
    """The documents of this run (made or read once per process)."""
    with _lock:
        if not _documents:
            if options.create_documents > 0:
                if not options.api_token:
                    raise SystemExit("--create-documents needs --api-token")
                _documents.extend(
                    create_documents(
                        options.api_url or host, options.api_token, options.create_documents
                    )
                )
            elif options.document_ids:
                _documents.extend(d.strip() for d in options.document_ids.split(",") if d.strip())
            else:
                prefix = options.document_prefix
                _documents.extend(f"{prefix}{n}" for n in range(options.documents))
        return _documents


def next_token(options: Any) -> str | None:
    """The next token of ``--tokens-file`` (in turn), or None (anonymous)."""
    global _tokens
    if not options.tokens_file:
        return None
    with _lock:
        if _tokens is None:
            lines = Path(options.tokens_file).read_text().split()
            if not lines:
                raise SystemExit(f"{options.tokens_file}: no tokens")
            _tokens = itertools.cycle(lines)
        return next(_tokens)


class Participant(RatatoskrUser):
    """A person in a document: a moving cursor, some reactions, some wandering."""

    def wait_time(self) -> float:
        # Paced: one tick every 1/cursor_rate seconds, however long a tick took.
        return float(constant_pacing(1.0 / self.options.cursor_rate)(self))

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def random_document(self) -> str:
        assert self.host is not None
        return random.choice(documents(self.options, self.host))

    def on_start(self) -> None:
        token = next_token(self.options)
        if token is not None:
            self.token = token  # (this user's own; the class default is anonymous)
        super().on_start()  # connects
        self.document = self.random_document()
        self.enter_document(self.document)
        self.x, self.y = random.randrange(800), random.randrange(600)

    @task
    def tick(self) -> None:
        self.x = (self.x + random.randint(-20, 20)) % 800
        self.y = (self.y + random.randint(-20, 20)) % 600
        self.set_state(self.document, "cursor", [self.x, self.y])
        ticks_per_second = self.options.cursor_rate
        if random.random() < self.options.reactions_per_minute / 60.0 / ticks_per_second:
            self.send_ephemeral(self.document, {"reaction": random.choice(REACTIONS)})
        stay = self.options.stay
        if stay > 0 and random.random() < 1.0 / (stay * ticks_per_second):
            self.leave_document(self.document)
            self.document = self.random_document()
            self.enter_document(self.document)
