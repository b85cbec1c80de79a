"""Training: the generic loop over every method, its checks, and running it on several processes."""
