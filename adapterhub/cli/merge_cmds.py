"""CLI commands (merge_cmds); work in progress."""
