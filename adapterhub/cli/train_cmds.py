"""CLI commands (train_cmds); work in progress."""
