"""Built-in plugin adapterhub_mlflow (work in progress)."""
