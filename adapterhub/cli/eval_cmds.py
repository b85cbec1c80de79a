"""CLI commands (eval_cmds); work in progress."""
