"""Built-in plugin adapterhub_bottleneck (work in progress)."""
