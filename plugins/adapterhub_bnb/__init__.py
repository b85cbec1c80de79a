"""Built-in plugin adapterhub_bnb (work in progress)."""
