"""Prints what llama.cpp's own `gguf` Python package reads from a GGUF file,
as one JSON object: the version, alignment, every metadata key (arrays as
their element type, length and first items) and every tensor (name, ggml
shape, type, byte offset and a SHA-256 of its bytes). For an F32 matrix it
adds the SHA-256 of the package's own F16 and Q8_0 quantizations of it, so
that a file written in those types can be compared byte for byte.

Usage: read.py FILE.gguf
"""

import hashlib
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import quantize


def value_json(field):
    kind = field.types[0]
    contents = field.contents()
    if kind != GGUFValueType.ARRAY:
        return {"type": kind.name, "value": contents}
    item = field.types[1].name if len(field.types) > 1 else None
    return {"type": "ARRAY", "item": item, "len": len(contents), "head": contents[:5]}


def sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def tensor_json(tensor):
    info = {
        "name": tensor.name,
        "shape": [int(d) for d in tensor.shape],
        "type": tensor.tensor_type.name,
        "offset": int(tensor.data_offset),
        "bytes": int(tensor.n_bytes),
        "sha256": sha256(tensor.data),
    }
    if tensor.tensor_type == GGMLQuantizationType.F32 and len(tensor.shape) == 2:
        rows = np.asarray(tensor.data, dtype=np.float32).reshape(-1, int(tensor.shape[0]))
        info["as_f16"] = sha256(quantize(rows, GGMLQuantizationType.F16))
        if rows.shape[1] % 32 == 0:
            info["as_q8_0"] = sha256(quantize(rows, GGMLQuantizationType.Q8_0))
    return info


def main():
    reader = GGUFReader(sys.argv[1])
    out = {
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": {
            name: value_json(field)
            for name, field in reader.fields.items()
            if not name.startswith("GGUF.")
        },
        "version": reader.fields["GGUF.version"].contents(),
        "tensors": [tensor_json(t) for t in reader.tensors],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
