"""One membership record per document the application entered. No I/O.

The record is the one place that says where a document is
(:class:`~ratatoskr_client.status.DocumentState`) and what is in flight for it
on the current connection; the core moves records between states, this module
only keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..status import DocumentState

__all__ = ["DocumentRecord", "Documents"]

ENTERING = DocumentState.ENTERING
PRESENT = DocumentState.PRESENT
LEAVING = DocumentState.LEAVING


class DocumentRecord:
    """Where one document is.

    Attributes:
        state: ENTERING, PRESENT or LEAVING (REFUSED records are dropped at once).
        join_sent: a join (or, without server-side presence, a ``request``) is
            on the wire on this connection and unanswered.
        rejoin_at: when to send the join again (the server rate limited it).
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

    def get(self, document_id: str) -> DocumentRecord | None:
        """The record of ``document_id``, if it has one."""
        return self._records.get(document_id)

    def is_present(self, document_id: str) -> bool:
        """True if the server confirmed our presence in ``document_id``."""
        record = self._records.get(document_id)
        return record is not None and record.state is PRESENT

    def enter(self, document_id: str) -> DocumentRecord:
        """The record of ``document_id``, created (ENTERING) if it has none, and
        back to ENTERING if it was LEAVING."""
        record = self._records.get(document_id)
        if record is None:
            record = self._records[document_id] = DocumentRecord()
        elif record.state is LEAVING:
            record.state = ENTERING
            record.join_sent = False
        return record

    def drop(self, document_id: str) -> DocumentRecord | None:
        """Forget ``document_id``'s record; returns it."""
        return self._records.pop(document_id, None)

    def entered(self) -> tuple[str, ...]:
        """Documents entered and not left (ENTERING or PRESENT), in order."""
        return tuple(d for d, r in self._records.items() if r.state is not LEAVING)

    def items(self) -> Iterator[tuple[str, DocumentRecord]]:
        """(document id, record) for every record, in order (a snapshot: the
        caller may change records while iterating)."""
        return iter(list(self._records.items()))

    def by_state(self) -> dict[str, tuple[str, ...]]:
        """Document ids by state name, for :class:`~ratatoskr_client.ClientStats`."""
        out: dict[str, list[str]] = {ENTERING.value: [], PRESENT.value: [], LEAVING.value: []}
        for doc_id, record in self._records.items():
            out[record.state.value].append(doc_id)
        return {state: tuple(docs) for state, docs in out.items()}

    def connection_lost(self) -> None:
        """Every document must be entered again on the next connection; those
        being left are simply gone (the server dropped us from them)."""
        for doc_id in [d for d, r in self._records.items() if r.state is LEAVING]:
            del self._records[doc_id]
        for record in self._records.values():
            record.state = ENTERING
            record.join_sent = False
            record.rejoin_at = None

    def clear(self) -> None:
        """Forget every record (the client is closed)."""
        self._records.clear()

    def __contains__(self, document_id: object) -> bool:
        return document_id in self._records

    def __len__(self) -> int:
        return len(self._records)
