"""Built-in plugin adapterhub_lora (work in progress)."""
