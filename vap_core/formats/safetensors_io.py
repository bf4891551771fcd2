"""Lazy safetensors reading and a streaming writer.

The writer takes the header (names, dtypes, shapes) up front and then one tensor at a time, so a
14B+5B checkpoint converts without ever holding more than one tensor in RAM. It writes to
``<path>.partial`` and renames at the end: a crash or an interrupt never leaves a half file.

Reading is memory-mapped by default (tensors share the file's pages, nothing is copied: what loading wants).
The converter reads with ``mmap=False`` instead: each tensor is read into its own buffer and freed once written.
Through a map, every page read stays mapped, and counted in the process's RSS, for as long as the file is open:
converting the Wan 14B+5B expert that way peaked at 8.7 GB RSS (8.4 GB of mapped file pages), against ~0.6 GB
with plain reads (bench/results/convert_fullsize.md).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable

import torch
from safetensors import safe_open

from ..errors import VAPFormatError

DTYPE_TO_ST = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
ST_TO_DTYPE = {v: k for k, v in DTYPE_TO_ST.items()}


def _header_length(path: str) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def read_header(path: str) -> tuple[dict, dict]:
    """Return ({name: {"dtype", "shape", "data_offsets"}}, metadata) without loading tensors.

    Raises VAPFormatError for a file that is not safetensors or is cut short."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 512 * 1024 * 1024:
                raise ValueError("header length points past the end of the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise VAPFormatError(
            f"'{path}' is not a readable safetensors file ({exc}). It may be truncated or not a "
            "safetensors file at all: download it again (only .safetensors is accepted, never pickle)."
        ) from None
    metadata = header.pop("__metadata__", None) or {}
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise VAPFormatError(
            f"'{path}' is truncated: its header promises {8 + n + end} bytes but the file has {size}. "
            "Download it again."
        )
    return header, metadata


class LazyTensors:
    """Name -> tensor access across one or many safetensors files, loading on demand."""

    def __init__(self, files: Iterable[str], mmap: bool = True):
        self.files = list(files)
        self.mmap = mmap
        self.data_start: dict[str, int] = {}  # file -> offset of its data section (8 + header length)
        self.where: dict[str, str] = {}
        self.info: dict[str, dict] = {}
        self.metadata: dict[str, str] = {}
        for path in self.files:
            header, metadata = read_header(path)
            self.data_start[path] = 8 + _header_length(path)
            self.metadata.update(metadata)
            for name, info in header.items():
                self.where[name] = path
                self.info[name] = info
        self._handles: dict[str, object] = {}

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.info[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return ST_TO_DTYPE[self.info[name]["dtype"]]

    def get(self, name: str) -> torch.Tensor:
        path = self.where[name]
        if not self.mmap:
            return self._read(name, path)
        handle = self._handles.get(path)
        if handle is None:
            handle = safe_open(path, framework="pt", device="cpu")
            self._handles[path] = handle
        return handle.get_tensor(name)

    def _read(self, name: str, path: str) -> torch.Tensor:
        """``name`` read into a fresh buffer (no map): its memory is returned when the tensor is dropped."""
        info = self.info[name]
        begin, end = info["data_offsets"]
        dtype, shape = ST_TO_DTYPE[info["dtype"]], info["shape"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        handle = self._handles.get(path)
        if handle is None:
            handle = open(path, "rb", buffering=0)
            self._handles[path] = handle
        buf = bytearray(end - begin)
        view, done = memoryview(buf), 0
        handle.seek(self.data_start[path] + begin)
        while done < len(buf):
            got = handle.readinto(view[done:])
            if not got:
                raise VAPFormatError(f"'{path}' ended inside tensor '{name}': download it again.")
            done += got
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def files_in_order(self) -> list[str]:
        return self.files

    def names_in_file(self, path: str) -> list[str]:
        return [n for n, p in self.where.items() if p == path]

    def close(self) -> None:
        for handle in self._handles.values():
            if hasattr(handle, "close"):
                handle.close()
        self._handles.clear()


def write_streaming(
    path: str,
    layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``layout`` (name, dtype, shape) to ``path``, asking ``produce(name)`` for each tensor in order."""
    header: dict = {}
    offset = 0
    for name, dtype, shape in layout:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    partial = path + ".partial"
    try:
        with open(partial, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for i, (name, dtype, shape) in enumerate(layout):
                t = produce(name)
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise RuntimeError(f"tensor {name}: got {t.dtype}{tuple(t.shape)}, planned {dtype}{tuple(shape)}")
                if t.numel():  # the tensor's own bytes, no copy of them (numpy exposes the buffer)
                    f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy())
                if progress is not None:
                    progress(i + 1, len(layout))
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
