"""One membership record per document the application entered. No I/O.

A record says where its document is (:class:`~ratatoskr_client.status.DocumentState`)
and what is in flight for it on the current connection. :class:`Documents`
owns the records and every change of their state; the core tells it what
happened:

* ``enter_document`` creates a record, ENTERING (a record being left is
  ENTERING again);
* the server confirms our presence: ENTERING → PRESENT;
* the server expires our presence (a stall), or the connection is lost:
  PRESENT → ENTERING (it is joined again);
* the server revokes our permission (``permission_revoked``): → REFUSED,
  kept (not joined again) until the application leaves or enters it again;
* ``leave_document`` while a state goodbye must go out first: → LEAVING, and
  the record goes once the goodbye (and the leave after it) went out; a
  record with nothing to say goodbye for goes at once, and so do the records
  being left when the connection is lost.

A membership the server refuses (or that this server's kind cannot have) is
dropped at once: whoever waits for it gets the error, else it is an ``error``
event, and the document is no longer entered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from ..status import DocumentState

__all__ = ["DocumentRecord", "Documents"]

ENTERING: Final = DocumentState.ENTERING
PRESENT: Final = DocumentState.PRESENT
LEAVING: Final = DocumentState.LEAVING
REFUSED: Final = DocumentState.REFUSED


class DocumentRecord:
    """Where one document is.

    Attributes:
        state: ENTERING, PRESENT or LEAVING.
        join_sent: on this connection, a join (or, without server-side
            presence, a ``request``) was sent or queued and the server has not
            confirmed it yet.
        rejoin_at: when to join again (the server rate limited the join, or
            expired our presence); None: no rejoin is scheduled.
    """

    __slots__ = ("join_sent", "rejoin_at", "state")

    def __init__(self) -> None:
        self.state = ENTERING
        self.join_sent = False
        self.rejoin_at: float | None = None

    def __repr__(self) -> str:
        return f"<DocumentRecord {self.state.value} join_sent={self.join_sent}>"


class Documents:
    """The records, in the order the documents were entered."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[str, DocumentRecord] = {}

    # ------------------------------------------------------------------ queries

    def get(self, document_id: str) -> DocumentRecord | None:
        """The record of ``document_id``, if it has one."""
        return self._records.get(document_id)

    def is_present(self, document_id: str) -> bool:
        """True if the server confirmed our presence in ``document_id``."""
        record = self._records.get(document_id)
        return record is not None and record.state is PRESENT

    def is_entering(self, document_id: str) -> bool:
        """True if ``document_id`` is entered and not confirmed on this connection."""
        record = self._records.get(document_id)
        return record is not None and record.state is ENTERING

    def is_leaving(self, document_id: str) -> bool:
        """True if ``document_id`` is being left (its goodbye waits for a token)."""
        record = self._records.get(document_id)
        return record is not None and record.state is LEAVING

    def is_refused(self, document_id: str) -> bool:
        """True if the server revoked our permission on ``document_id``."""
        record = self._records.get(document_id)
        return record is not None and record.state is REFUSED

    def entered(self) -> tuple[str, ...]:
        """Documents entered and not left (ENTERING or PRESENT), in order."""
        return tuple(
            d for d, r in self._records.items() if r.state is not LEAVING and r.state is not REFUSED
        )

    def items(self) -> Iterator[tuple[str, DocumentRecord]]:
        """(document id, record) for every record, in order (a snapshot: the
        caller may change records while iterating)."""
        return iter(list(self._records.items()))

    def by_state(self) -> dict[str, tuple[str, ...]]:
        """Document ids by state name, one key per
        :class:`~ratatoskr_client.status.DocumentState`, for
        :class:`~ratatoskr_client.ClientStats`."""
        out: dict[str, list[str]] = {state.value: [] for state in DocumentState}
        for doc_id, record in self._records.items():
            out[record.state.value].append(doc_id)
        return {state: tuple(docs) for state, docs in out.items()}

    def deadline(self) -> float:
        """The earliest scheduled rejoin (inf: none)."""
        return min(
            (r.rejoin_at for r in self._records.values() if r.rejoin_at is not None),
            default=float("inf"),
        )

    def due(self, now: float) -> list[str]:
        """Documents whose rejoin is due at ``now``."""
        return [
            d for d, r in self._records.items() if r.rejoin_at is not None and r.rejoin_at <= now
        ]

    # ------------------------------------------------------------------ changes

    def enter(self, document_id: str) -> DocumentRecord:
        """The application enters ``document_id``: its record, created (ENTERING)
        if it has none, and back to ENTERING if it was LEAVING."""
        record = self._records.get(document_id)
        if record is None:
            record = self._records[document_id] = DocumentRecord()
        elif record.state is LEAVING or record.state is REFUSED:
            record.state = ENTERING
            record.join_sent = False
        return record

    def joining(self, document_id: str) -> bool:
        """A join is sent (or queued) for ``document_id`` on this connection;
        False (and nothing changes) if the document has no record or is being
        left."""
        record = self._records.get(document_id)
        if record is None or record.state is LEAVING or record.state is REFUSED:
            return False
        record.join_sent = True
        record.rejoin_at = None
        return True

    def confirmed(self, document_id: str) -> bool:
        """The server confirmed our presence: ENTERING becomes PRESENT. False
        when there was nothing to confirm (not entered, being left, or already
        present: a join answered twice)."""
        record = self._records.get(document_id)
        if record is None or record.state is not ENTERING:
            return False
        record.state = PRESENT
        record.join_sent = False
        return True

    def expired(self, document_id: str) -> bool:
        """The server dropped our presence (a stall outlived its TTL): PRESENT
        is ENTERING again. True if a join must go out (none is in flight);
        False for a document not entered or being left."""
        record = self._records.get(document_id)
        if record is None or record.state is LEAVING or record.state is REFUSED:
            return False
        record.state = ENTERING
        return not record.join_sent

    def rejoin_at(self, document_id: str, at: float) -> bool:
        """Join ``document_id`` again at ``at`` (if it is still being entered)."""
        record = self._records.get(document_id)
        if record is None or record.state is not ENTERING:
            return False
        record.rejoin_at = at
        return True

    def leaving(self, document_id: str) -> None:
        """The application leaves ``document_id`` and a goodbye must go out
        first: LEAVING until it has (then :meth:`drop`)."""
        record = self._records.get(document_id)
        if record is not None:
            record.state = LEAVING
            record.rejoin_at = None  # (a rejoin scheduled while entering is moot)

    def refused(self, document_id: str) -> None:
        """The server revoked our permission: REFUSED, nothing in flight."""
        record = self._records.get(document_id)
        if record is not None:
            record.state = REFUSED
            record.join_sent = False
            record.rejoin_at = None

    def drop(self, document_id: str) -> DocumentRecord | None:
        """Forget ``document_id``'s record (left, or refused); returns it."""
        return self._records.pop(document_id, None)

    def connection_lost(self) -> None:
        """Every document must be entered again on the next connection; those
        being left are simply gone (the server dropped us from them)."""
        for doc_id in [d for d, r in self._records.items() if r.state is LEAVING]:
            del self._records[doc_id]
        for record in self._records.values():
            if record.state is not REFUSED:
                record.state = ENTERING
            record.join_sent = False
            record.rejoin_at = None

    def clear(self) -> None:
        """Forget every record (the client is closed)."""
        self._records.clear()

    def __contains__(self, document_id: object) -> bool:
        return document_id in self._records
