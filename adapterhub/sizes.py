"""Byte sizes as people write them: ``20GB`` (10**9), ``512MiB`` (2**20), ``2000000``."""

from __future__ import annotations

import re

from .errors import InvalidInput

UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
}


def parse_size(value: str | int, what: str = "size") -> int:
    """``value`` in bytes; a positive number with an optional decimal (KB, MB, GB, TB) or binary (KiB, MiB,
    GiB, TiB) unit. Anything else is :class:`InvalidInput` naming ``what``."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).upper() not in UNITS:
            raise InvalidInput(f"invalid {what} {value!r}: use a number with KB/MB/GB or KiB/MiB/GiB (e.g. 20GB)")
        n = int(float(m.group(1)) * UNITS[m.group(2).upper()])
    if n <= 0:
        raise InvalidInput(f"invalid {what} {value!r}: must be positive")
    return n
