"""Read and write safetensors files one tensor at a time, in bounded memory.

The safetensors library reads through a memory map (every page a conversion touches stays
resident until the file is closed, so a 10 GB shard costs 10 GB of resident memory) and
writes a file from a dict that holds every tensor at once. Converting a 7B model shard by
shard needs neither: :class:`TensorFile` reads one tensor with plain ``readinto`` calls, and
:class:`StreamingWriter` lays out the header first (every name, dtype and shape is known
from the config before any data is read) and then writes each tensor at its offset as
soon as it is complete. The files are ordinary safetensors files
(``safetensors.torch.load_file`` reads them; tested).

Format: 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``
(padded with spaces to a multiple of 8), then the tensors' bytes, little-endian and
row-major, at ``8 + N + begin``. Offsets tile the data area without holes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from worldvla.errors import DataError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # the safetensors library's own limit on the JSON header


class TensorFile:
    """One safetensors file: its header, and each tensor read on demand (no memory map)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise DataError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
                (n,) = struct.unpack("<Q", raw)
                if n > MAX_HEADER:
                    raise DataError(f"{self.path}: safetensors header of {n} bytes is implausibly large")
                header = json.loads(f.read(n))
            size = self.path.stat().st_size
        except OSError as e:
            raise DataError(f"{self.path}: cannot read: {e}") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.path}: corrupt safetensors header: {e}") from e
        if not isinstance(header, dict):
            raise DataError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype = DTYPES[e["dtype"]]
                shape = tuple(int(d) for d in e["shape"])
                begin, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"{self.path}: tensor {name!r} has an unreadable header entry: {e}") from err
            numel = 1
            for d in shape:
                numel *= d
            if end - begin != numel * dtype.itemsize or self._start + end > size or begin < 0:
                raise DataError(
                    f"{self.path}: tensor {name!r} ({e['dtype']} {list(shape)}) does not fit its data "
                    f"offsets [{begin}, {end}) in a file of {size} bytes"
                )
            self.entries[name] = (dtype, shape, begin, end)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name][0]

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name``, in its stored dtype, freshly allocated on the CPU."""
        dtype, shape, begin, end = self.entries[name]
        out = torch.empty(shape, dtype=dtype)
        buf = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
        if buf is None:
            return out
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            if f.readinto(memoryview(buf)) != end - begin:
                raise DataError(f"{self.path}: truncated while reading tensor {name!r}")
        return out


class StreamingWriter:
    """Write a safetensors file whose entries are declared up front and filled in any order.

    ``entries`` gives ``(name, dtype, shape)`` in file order; :meth:`write` puts one tensor
    at its place; :meth:`close` checks that every tensor was written. Write into a
    temporary path and rename it (the caller's :func:`worldvla.utils.io.atomic_dir`).
    """

    def __init__(
        self,
        path: str | Path,
        entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self._layout: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        offset = 0
        for name, dtype, shape in entries:
            numel = 1
            for d in shape:
                numel *= int(d)
            end = offset + numel * dtype.itemsize
            header[name] = {
                "dtype": NAMES[dtype],
                "shape": [int(d) for d in shape],
                "data_offsets": [offset, end],
            }
            self._layout[name] = (dtype, tuple(int(d) for d in shape), offset, end)
            offset = end
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._start = 8 + len(blob)
        self._written: set[str] = set()
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(struct.pack("<Q", len(blob)) + blob)
        self._f.truncate(self._start + offset)  # the full size, so writes can land in any order

    def write(self, name: str, tensor: torch.Tensor) -> None:
        dtype, shape, begin, end = self._layout[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"{name}: expected {dtype} {list(shape)}, got {tensor.dtype} {list(tensor.shape)}"
            )
        if name in self._written:
            raise ValueError(f"{name}: written twice")
        data = tensor.detach().to("cpu").contiguous()
        self._f.seek(self._start + begin)
        if data.numel():
            self._f.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
        self._written.add(name)

    def close(self) -> None:
        missing = [n for n in self._layout if n not in self._written]
        self._f.close()
        if missing:
            raise ValueError(f"{self.path}: {len(missing)} tensors never written, e.g. {missing[:3]}")

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._f.close()
