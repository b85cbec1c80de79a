"""Streaming merges of an adapter into its base: the plan, the shard writer, and the quantized-base variant."""
