"""Training and evaluation: the training loop and its checks, data loading and quality, base-model loading,
experiment tracking, evaluation."""
