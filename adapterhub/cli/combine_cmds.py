"""CLI commands: combine and compose (work in progress)."""
