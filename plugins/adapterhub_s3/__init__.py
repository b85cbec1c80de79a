"""Built-in plugin adapterhub_s3 (work in progress)."""
