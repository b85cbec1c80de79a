"""The registry: metadata (SQLAlchemy; SQLite or PostgreSQL) and content-addressed blobs.

This package never imports torch."""
