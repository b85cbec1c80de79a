"""The public helpers of infrastructure plugins (stores, formats, quantizers, trackers): the counterpart of
:mod:`adapterhub.tuning`, the toolkit of method plugins. Their contracts are in :mod:`adapterhub.interfaces`.

What a plugin may import is listed, with the reason for each module, in
:data:`adapterhub.plugins.PUBLIC_MODULES`; everything else in adapterhub is internal.

This module imports no torch (plugins import it when they load, and ``adapterhub --help`` loads plugins).
"""

from __future__ import annotations

# -- reading model and adapter directories -------------------------------------------------------------------
from .files.checkpoint import load_json
from .files.fingerprint import find_weight_files

# -- output directories: written beside the target, renamed into place, never over the input -------------
from .files.output_dir import atomic_out, check_out, check_out_base

# -- exporting stored versions (format plugins) ----------------------------------------------------------------
from .operations.export import MERGE_ONLY, export_peft, merge_ref, open_adapter

# -- blob stores -------------------------------------------------------------------------------------------
from .registry.blobs import check_digest, copy_stream_verified, hash_file
from .registry.ranges import RangeReader
from .registry.remotes import mask, scrub
from .training.modeling import check_base_dir, quiet_transformers, weight_shape_mismatch

__all__ = [
    "MERGE_ONLY",
    "RangeReader",
    "atomic_out",
    "check_base_dir",
    "check_digest",
    "check_out",
    "check_out_base",
    "copy_stream_verified",
    "export_peft",
    "find_weight_files",
    "hash_file",
    "load_json",
    "mask",
    "merge_ref",
    "open_adapter",
    "quiet_transformers",
    "scrub",
    "weight_shape_mismatch",
]
