"""Reading and writing checkpoint tensors without pickle, and checking them before anything is loaded.

* :func:`write_safetensors`: a state dict to a safetensors file. Tensors that are the same view of one storage
  (tied weights) are written once and listed in the file's metadata (``dclszoo_aliases``); other tensors that
  share a storage are copied (safetensors refuses shared storage).
* :func:`read_safetensors`: checks the file's structure first (header length, JSON header, every tensor's
  byte range against its dtype and shape, and that the data ends exactly at the end of the file), so a
  truncated or corrupt file raises :class:`CheckpointError` saying which and how to fix it, instead of a
  low-level error or, worse, silently short tensors. Then restores the aliases.
* :func:`read_pickle_weights`: ``.bin`` / ``.pt`` files, only when the caller allowed them, through
  ``torch.load(weights_only=True)`` (torch's restricted unpickler: tensors and plain containers only).
* :func:`check_state`: compares a state dict with a model's (missing, unexpected, shape) and names the keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping

import torch

__all__ = ["CheckpointError", "PICKLE_SUFFIXES", "file_sha256", "write_safetensors", "read_safetensors",
           "read_pickle_weights", "check_state", "tensor_digest"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALIASES_KEY = "dclszoo_aliases"
_MAX_HEADER = 100 * 1024 * 1024
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: corrupt or truncated file, refused format, or a config/model mismatch."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """First 16 hex digits of the SHA-256 of a tensor's dtype, shape and bytes (a base-weights fingerprint)."""
    t = t.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` to ``path`` (see the module docstring for tied tensors). Writes to a temporary file
    first and renames it, so an interrupted save never leaves a truncated file under the final name."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_view: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state[{name!r}] is a {type(t).__name__}; only tensors can be saved.")
        t = t.detach()
        if t.device.type == "meta":
            raise CheckpointError(f"state[{name!r}] is on the meta device (no data); materialise the model first.")
        view = _storage_key(t) + (t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and view in first_view:
            aliases[name] = first_view[view]
            continue
        if t.numel():
            first_view[view] = name
            if _storage_key(t) in storages or not t.is_contiguous():
                t = t.clone(memory_format=torch.contiguous_format)
            storages.add(_storage_key(t))
        tensors[name] = t.to("cpu").contiguous()
    meta = dict(metadata or {})
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def _corrupt(path: Path, what: str, fix: str) -> CheckpointError:
    return CheckpointError(f"{path.name} ({path}) is {what}. {fix}")


def _check_structure(path: Path, fix: str) -> dict:
    """Validate a safetensors file's layout; return its header (tensor entries and ``__metadata__``)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"truncated: {size} bytes, shorter than the 8-byte safetensors header length", fix)
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise _corrupt(path, f"truncated or not a safetensors file: its header claims {n} bytes but the file "
                                 f"has {size} bytes", fix)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(path, f"corrupt: its safetensors header is not valid JSON ({exc})", fix) from None
    data_size = size - 8 - n
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in entry["data_offsets"])
            nbytes = math.prod(int(s) for s in entry["shape"]) * _ITEMSIZE[entry["dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"corrupt: header entry {name!r} is malformed ({type(exc).__name__}: {exc})", fix) \
                from None
        if not 0 <= begin <= stop or stop - begin != nbytes:
            raise _corrupt(path, f"corrupt: tensor {name!r} ({entry['dtype']} {entry['shape']}) has byte range "
                                 f"{begin}..{stop}, expected {nbytes} bytes", fix)
        if stop > data_size:
            raise _corrupt(path, f"truncated: tensor {name!r} ends at byte {stop} of the data section, which has "
                                 f"only {data_size} bytes", fix)
        end = max(end, stop)
    if end != data_size:
        raise _corrupt(path, f"corrupt: {data_size - end} bytes follow the last tensor (a concatenated or "
                             f"partially overwritten file)", fix)
    return header


def read_safetensors(path: str | os.PathLike, fix: str = "Re-save or re-download it.",
                     sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file after checking it (see the module docstring) and its SHA-256 when given.

    Returns:
        ``(state, metadata)``, tensors on the CPU, tied tensors restored as one tensor under several names.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or its SHA-256 differs from ``sha256``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such file at {path}. {fix}")
    header = _check_structure(path, fix)
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise _corrupt(path, f"corrupt: its SHA-256 is {actual}, dclszoo_config.json records {sha256}", fix)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise _corrupt(path, f"unreadable ({type(exc).__name__}: {exc})", fix) from None
    metadata = dict(header.get("__metadata__") or {})
    aliases = json.loads(metadata.pop(ALIASES_KEY, "{}"))
    for name, target in aliases.items():
        if target not in state:
            raise _corrupt(path, f"corrupt: alias {name!r} points to missing tensor {target!r}", fix)
        state[name] = state[target]
    return state, metadata


def read_pickle_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``.bin`` / ``.pt`` state dict through ``torch.load(weights_only=True)`` (call only when allowed)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the restricted unpickler is a refusal
        raise CheckpointError(
            f"{path.name}: torch.load(weights_only=True) refused or failed to read it ({type(exc).__name__}: "
            f"{exc}). dclszoo never runs the full unpickler; convert the file to safetensors where it was made."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path.name}: expected a dict of name -> tensor (a state_dict), got "
                              f"{type(state).__name__}.")
    return state


def _names(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str,
                require_all: bool = True, hint: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``state`` fits ``expected`` (a model's state dict).

    Args:
        state: Tensors read from the checkpoint.
        expected: The model's ``state_dict()``.
        source: The file, for messages.
        require_all: Every key of ``expected`` must be in ``state`` (full checkpoints); else only the keys of
            ``state`` are checked (adapters).
        hint: Appended to the messages (what probably went wrong).
    """
    unexpected = set(state) - set(expected)
    if unexpected:
        raise CheckpointError(
            f"{source}: key(s) {_names(unexpected)} are not in the rebuilt model; the checkpoint does not match "
            f"the architecture or patch config. {hint}".rstrip()
        )
    if require_all:
        missing = set(expected) - set(state)
        if missing:
            raise CheckpointError(f"{source}: the rebuilt model has key(s) {_names(missing)} the checkpoint lacks. "
                                  f"{hint}".rstrip())
    for name, t in state.items():
        want = expected[name]
        if tuple(t.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: {name!r} has shape {tuple(t.shape)} in the checkpoint, {tuple(want.shape)} in the rebuilt "
                f"model. {hint}".rstrip()
            )
        if t.is_floating_point() != want.is_floating_point() and want.dtype != torch.bool:
            raise CheckpointError(
                f"{source}: {name!r} is {t.dtype} in the checkpoint, {want.dtype} in the rebuilt model. {hint}".rstrip()
            )
