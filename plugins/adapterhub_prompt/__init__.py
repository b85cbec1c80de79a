"""Built-in plugin adapterhub_prompt (work in progress)."""
