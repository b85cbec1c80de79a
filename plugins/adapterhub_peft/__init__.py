"""Built-in plugin: the PEFT adapter directory format (placeholder until checkpoint.py lands)."""
