"""A minimal NRRD reader for the files dcmqi writes (raw or gzip, little endian, 3D)."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TYPES = {
    "short": np.int16,
    "unsigned short": np.uint16,
    "ushort": np.uint16,
    "uchar": np.uint8,
    "unsigned char": np.uint8,
    "int": np.int32,
    "float": np.float32,
}


@dataclass(frozen=True)
class NrrdImage:
    """Voxels as ``(k, j, i)`` (numpy order of NRRD's fastest-first axes) plus geometry."""

    array: np.ndarray
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0)
    directions: np.ndarray  # rows: the step in mm along axis i, j, k


def read_nrrd(path: Path) -> NrrdImage:
    raw = path.read_bytes()
    header_end = raw.index(b"\n\n")
    fields: dict[str, str] = {}
    for line in raw[:header_end].decode("ascii").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip().lstrip("=").strip()
    if fields.get("space") not in ("left-posterior-superior", "LPS"):
        raise ValueError(f"unexpected space {fields.get('space')!r}")
    data = raw[header_end + 2 :]
    if fields.get("encoding") in ("gzip", "gz"):
        data = gzip.decompress(data)
    sizes = [int(v) for v in fields["sizes"].split()]
    dtype = np.dtype(_TYPES[fields["type"]]).newbyteorder("<")
    array = np.frombuffer(data, dtype=dtype).reshape(sizes[::-1])
    vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])
    directions = np.asarray([[float(v) for v in vector.split(",")] for vector in vectors])
    origin = np.asarray(
        [float(v) for v in re.findall(r"\(([^)]*)\)", fields["space origin"])[0].split(",")]
    )
    return NrrdImage(array=array, origin=origin, directions=directions)
