"""Training and evaluation: the training loop and its checks, running it on several processes, data loading
and quality, base-model loading, experiment tracking, evaluation."""
