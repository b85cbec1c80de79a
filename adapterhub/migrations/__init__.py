"""Alembic environment and versions for the registry schema (shipped inside the wheel as
``adapterhub.migrations``). Run automatically on first use; ``adapterhub db upgrade`` runs them
explicitly."""
