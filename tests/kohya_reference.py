"""kohya sd-scripts' definitions, written out independently for the tests to hold our code against.

`precalculated_hashes` follows `train_util.precalculate_safetensors_hashes`: keep only the `ss_*`
metadata, serialize with safetensors, then `addnet_hash_safetensors` (sha256 of everything after the
8-byte length and the header) and `addnet_hash_legacy` (seek 0x100000 in those bytes, sha256 of the next
0x10000, first 8 hex).
"""

from __future__ import annotations

import hashlib
from io import BytesIO


def precalculated_hashes(tensors, metadata) -> tuple[str, str]:
    import safetensors.torch

    training_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    stream = BytesIO(safetensors.torch.save(dict(tensors), training_only))
    n = int.from_bytes(stream.read(8), "little")
    stream.seek(8 + n)
    model = hashlib.sha256(stream.read()).hexdigest()
    stream.seek(0x100000)
    legacy = hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]
    return model, legacy


def file_hashes(path) -> tuple[str, str]:
    """kohya's two hashes for a saved LoRA, from its tensors and stored metadata."""
    import json
    import struct

    from safetensors.torch import load_file

    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    metadata = json.loads(raw[8:8 + n]).get("__metadata__", {})
    return precalculated_hashes(load_file(str(path)), metadata)
