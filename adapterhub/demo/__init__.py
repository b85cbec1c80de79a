"""Data shipped for `adapterhub demo`: a small labelled sentiment set (train/eval, no overlap)."""
