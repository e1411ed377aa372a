"""Load test: participants spread over documents, moving cursors, reacting, hopping.

Each simulated user connects, enters one of ``--documents`` documents, and
then, several times a second, moves its cursor (``set_state``); now and then
it sends a reaction (``send_ephemeral``), and every ``--stay`` seconds on
average it leaves its document for another one. Start a relay, then Locust:

    ratatoskr relay &
    locust -f examples/locustfile.py --host http://127.0.0.1:4151 \\
        --headless --users 200 --spawn-rate 50 --run-time 60s --documents 20

Every option below also appears in Locust's web UI. See docs/load-testing.md.
"""

from __future__ import annotations

import random
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


class Participant(RatatoskrUser):
    """A person in a document: a moving cursor, some reactions, some wandering."""

    def wait_time(self) -> float:
        # Paced: one tick every 1/cursor_rate seconds, however long a tick took.
        return float(constant_pacing(1.0 / self.options.cursor_rate)(self))

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def random_document(self) -> str:
        return f"{self.options.document_prefix}{random.randrange(self.options.documents)}"

    def on_start(self) -> None:
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
