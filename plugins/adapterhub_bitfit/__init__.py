"""Built-in plugin adapterhub_bitfit (work in progress)."""
