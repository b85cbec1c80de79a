"""Built-in plugin adapterhub_ia3 (work in progress)."""
