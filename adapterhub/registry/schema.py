"""The registry's tables (SQLAlchemy 2 Core). Alembic migrations in ``migrations/`` create them;
this module is the single description both the code and ``alembic revision --autogenerate`` use.

Digests are stored as 64 lowercase hex characters (no ``sha256:`` prefix); users see ``sha256:<hex>``.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Timestamp = sa.DateTime(timezone=True)

#: a base model, known by the fingerprint of its exact weights
base_models = sa.Table(
    "base_models",
    metadata,
    sa.Column("fingerprint", sa.String(71), primary_key=True),  # "sha256:" + 64 hex
    sa.Column("name", sa.String(512)),  # a human hint (e.g. base_model_name_or_path)
    sa.Column("tensors", sa.Integer),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("properties", sa.JSON),  # e.g. quantization of the base (later issues)
    sa.Column("created_at", Timestamp, nullable=False),
)

#: a named adapter (``namespace/name``); its versions are numbered 1, 2, 3 ...
adapters = sa.Table(
    "adapters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(129), nullable=False, unique=True),
    sa.Column("created_at", Timestamp, nullable=False),
)

#: an immutable version; ``digest`` is the sha256 of its canonical manifest
versions = sa.Table(
    "versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),  # adapter | composition
    sa.Column("method", sa.String(64)),
    sa.Column("base_fingerprint", sa.String(71), sa.ForeignKey("base_models.fingerprint")),
    sa.Column("manifest", sa.Text, nullable=False),  # the canonical manifest JSON, verbatim
    sa.Column("size", sa.BigInteger, nullable=False),  # total bytes of its files
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("created_by", sa.String(256)),
    sa.UniqueConstraint("adapter_id", "number", name="uq_versions_adapter_number"),
    sa.UniqueConstraint("adapter_id", "digest", name="uq_versions_adapter_digest"),
)

#: content-addressed blobs known to the registry (the bytes live in the blob store)
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)

#: the files of a version: relative path -> blob
files = sa.Table(
    "files",
    metadata,
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("blob_digest", sa.String(64), sa.ForeignKey("blobs.digest"), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
)

#: mutable pointers (``production``) from an adapter name to one of its versions
aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

#: every move of an alias: who, when, from which version to which, and why
alias_events = sa.Table(
    "alias_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id"), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("old_version_id", sa.Integer, sa.ForeignKey("versions.id")),
    sa.Column("new_version_id", sa.Integer, sa.ForeignKey("versions.id")),  # NULL: removed
    sa.Column("actor", sa.String(256)),
    sa.Column("reason", sa.Text),
    sa.Column("at", Timestamp, nullable=False),
    sa.Index("ix_alias_events_adapter_alias", "adapter_id", "alias"),
)

#: free-form key/value labels on a version (mutable, not part of the digest)
tags = sa.Table(
    "tags",
    metadata,
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

#: lineage: child was trained_from / combined_from / composed_of / quantized_from /
#: extracted_from / imported_from parent. ``parent_id`` is NULL for a parent outside this registry,
#: which is then known by its digest and ref only.
lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("child_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False, index=True),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("versions.id"), index=True),
    sa.Column("parent_digest", sa.String(64)),
    sa.Column("parent_ref", sa.String(256)),
    sa.Column("relation", sa.String(32), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("details", sa.JSON),
)

#: evaluation results of a version on a dataset (keyed by the data's digest)
evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False, index=True),
    sa.Column("data_digest", sa.String(64), nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("details", sa.JSON),
    sa.Column("created_at", Timestamp, nullable=False),
)

#: no longer used (kept so old databases migrate): merged models were cached here as blobs; the cache now
#: lives under the home (``operations/merged_cache``), and ``gc`` empties this table.
merged_models = sa.Table(
    "merged_models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("adapter_digest", sa.String(64), nullable=False),
    sa.Column("base_fingerprint", sa.String(71), nullable=False),
    sa.Column("dtype", sa.String(16), nullable=False),  # bfloat16 | float16 | float32 | auto
    sa.Column("shard_size", sa.BigInteger, nullable=False),
    sa.Column("files", sa.JSON, nullable=False),
    sa.Column("summary", sa.JSON),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("adapter_digest", "base_fingerprint", "dtype", "shard_size", name="uq_merged_models_key"),
)

#: API tokens of ``adapterhub serve``. The secret is never stored: only ``sha256(salt + secret)``. A token
#: reads ``ahub_<key_id>_<secret>``; ``key_id`` (public) finds the row, the secret is compared in constant
#: time. Revoked tokens stay (the audit log names them); a name is unique among tokens not revoked.
tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False, unique=True),
    sa.Column("salt", sa.String(32), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),  # read | write | promote | admin
    sa.Column("namespace", sa.String(64)),  # NULL: every namespace
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("created_by", sa.String(256)),
    sa.Column("expires_at", Timestamp),  # NULL: never
    sa.Column("revoked_at", Timestamp),
    sa.Column("last_used_at", Timestamp),
    sa.Index(
        "ix_tokens_active_name",
        "name",
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    ),
)

#: who did what through the server (and token changes made directly): every write, every refused
#: request (401/403) with the token's name when one was given. Never a secret.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("actor", sa.String(256)),  # token name (NULL: no valid token)
    sa.Column("action", sa.String(64), nullable=False),  # push, alias.set, tag, token.create ...
    sa.Column("target", sa.String(512)),  # ref, name@alias, token name ...
    sa.Column("status", sa.Integer, nullable=False),  # HTTP status of the answer
    sa.Column("detail", sa.Text),  # the error, or what changed
    sa.Column("client", sa.String(128)),  # the client's address
    sa.Index("ix_audit_events_at", "at"),
)

#: the tamper-evident history (:mod:`adapterhub.registry.history`): one row per change to versions, alias
#: events, aliases, tags and evaluations, each committing to the one before by hash. Append-only.
history = sa.Table(
    "history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),  # genesis | version | alias | alias.state | tag | evaluation
    sa.Column("content", sa.Text, nullable=False),  # canonical JSON of the change
    sa.Column("prev", sa.String(64), nullable=False),  # hash of the entry before (64 zeros: the first)
    sa.Column("hash", sa.String(64), nullable=False),  # sha256(prev, kind, content)
)
