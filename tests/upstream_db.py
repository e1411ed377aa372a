"""A database with upstream Ratatoskr's schema, for tests of its access rules
without upstream itself (CI has no copy of it).

The tables are copied from upstream commit ``84a3a06``,
``src/storage/database.ts`` (the ``migrations`` list and the
``automerge_id`` migration): only those the relay reads.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY,
  email TEXT,
  name TEXT,
  user_document_id TEXT,
  quota_max_documents INTEGER DEFAULT 10000,
  quota_max_document_size INTEGER DEFAULT 10485760,
  quota_max_total_storage INTEGER DEFAULT 1073741824,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE TABLE IF NOT EXISTS api_tokens (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id),
  name TEXT NOT NULL,
  token_hash TEXT NOT NULL,
  scopes TEXT,
  last_used_at TEXT,
  expires_at TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE TABLE IF NOT EXISTS documents (
  id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES users(id),
  automerge_id TEXT,
  type TEXT,
  size INTEGER DEFAULT 0,
  expires_at TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE TABLE IF NOT EXISTS acl_entries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
  principal TEXT NOT NULL,
  permission TEXT NOT NULL,
  UNIQUE(document_id, principal)
);
"""


class UpstreamDb:
    """Upstream's metadata database at ``path``, written as upstream would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)

    def user(self, user_id: str, name: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO users (id, email, name) VALUES (?, ?, ?)",
            (user_id, f"{user_id}@example.com", name or user_id.title()),
        )
        self.db.commit()

    def document(
        self,
        doc_id: str,
        owner: str,
        *,
        automerge_id: str | None = None,
        type: str | None = None,
        acl: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.db.execute(
            "INSERT INTO documents (id, owner_id, automerge_id, type) VALUES (?, ?, ?, ?)",
            (doc_id, owner, automerge_id, type),
        )
        for principal, permission in acl:
            self.grant(doc_id, principal, permission)
        self.db.commit()

    def grant(self, doc_id: str, principal: str, permission: str = "read") -> None:
        self.db.execute(
            "INSERT INTO acl_entries (document_id, principal, permission) VALUES (?, ?, ?)",
            (doc_id, principal, permission),
        )
        self.db.commit()

    def revoke(self, doc_id: str, principal: str) -> None:
        self.db.execute(
            "DELETE FROM acl_entries WHERE document_id = ? AND principal = ?", (doc_id, principal)
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()
