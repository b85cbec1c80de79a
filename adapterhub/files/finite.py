"""Finding NaN and inf in a safetensors file's floating-point tensors, by their bit patterns.

Push refuses an adapter holding them: merged, a LoRA whose ``B`` is ``+inf`` turns the base's weights into
``inf``/``nan`` with exit status 0. Bits, not values, so bfloat16 and float8 need no torch: a value is not
finite when its exponent bits are all ones (float8 e4m3 has no inf; only its all-ones pattern is NaN).
"""

from __future__ import annotations

import numpy as np

from .safetensors_header import Header

#: dtype -> (unsigned integer view, mask, value that the masked bits take when not finite)
_PATTERNS = {
    "F64": (np.uint64, 0x7FF0000000000000, 0x7FF0000000000000),
    "F32": (np.uint32, 0x7F800000, 0x7F800000),
    "F16": (np.uint16, 0x7C00, 0x7C00),
    "BF16": (np.uint16, 0x7F80, 0x7F80),
    "F8_E5M2": (np.uint8, 0x7C, 0x7C),
    "F8_E4M3": (np.uint8, 0x7F, 0x7F),
}
CHUNK = 16 << 20  # bytes read at a time: memory stays bounded whatever the tensor size


def non_finite(header: Header) -> list[tuple[str, int]]:
    """``[(tensor name, number of NaN/inf values)]`` of the floating-point tensors holding any."""
    out = []
    with open(header.path, "rb") as f:
        for t in sorted(header.tensors.values(), key=lambda t: t.start):
            pattern = _PATTERNS.get(t.dtype)
            if pattern is None or t.nbytes == 0:
                continue
            view, mask, bad = pattern
            width = np.dtype(view).itemsize
            f.seek(t.start)
            count, left = 0, t.nbytes
            while left:
                data = f.read(min(CHUNK - CHUNK % width, left))
                if not data:
                    break
                left -= len(data)
                bits = np.frombuffer(data, dtype=np.dtype(view).newbyteorder("<"))
                count += int(np.count_nonzero((bits & view(mask)) == view(bad)))
            if count:
                out.append((t.name, count))
    return out
