"""Checkpoints: atomic save, safe load (``weights_only=True``), architecture check, RNG capture.

A checkpoint is a plain dict of tensors and Python primitives, so it loads under
``torch.load(weights_only=True)`` (no pickled code runs):
``model, optimizer, scheduler, memories, epoch, rng, config, history, format``.
``epoch`` counts *completed* epochs. The file is written to a temporary name in the same folder,
flushed, then ``os.replace``-d, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import os
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskcl.atomic import current_umask
from maskcl.errors import CheckpointError, find_in_chain

FORMAT = 1
SHOWN = 5


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(_write_failure(path, exc)) from exc
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; follow the umask like open()
        with os.fdopen(fd, "wb") as handle:
            torch.save({**state, "format": FORMAT}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)  # never leave a partial temp file; `path` is untouched
        cause = _os_error(exc)
        if cause is not None:
            raise CheckpointError(_write_failure(path, cause)) from exc
        raise


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save reports a failed handle write as a RuntimeError
    whose ``__context__`` is the OSError (e.g. ENOSPC)."""
    return find_in_chain(exc, OSError)


def _write_failure(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full (no space left on device)"
        fix = "free space or train into a --out folder on another disk, then re-run to resume"
    else:
        reason = f"{type(exc).__name__}: {exc.strerror or exc}"
        fix = "check the folder is writable, then re-run to resume"
    return f"cannot write checkpoint '{path}': {reason}; any previous checkpoint there is unchanged — {fix}"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely; every failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if path.is_dir():
        inside = path / "last.pt"
        hint = f" (it holds '{inside}')" if inside.is_file() else ""
        raise CheckpointError(f"checkpoint '{path}' is a folder{hint}; expected a checkpoint file such as last.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if not _looks_like_torch_file(path):
        raise CheckpointError(
            f"checkpoint '{path}' is not a torch checkpoint file (neither a torch zip archive nor a legacy "
            "pickle); expected a last.pt written by `maskcl train`"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(_load_failure(path, exc)) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint '{path}' is not a maskcl checkpoint (no 'model' entry)")
    return state


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch ≥ 1.6; a truncated one still starts ``PK``) or a pickle stream (the
    legacy format starts with protocol 2+)."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04" or zipfile.is_zipfile(path):
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _load_failure(path: Path, exc: Exception) -> str:
    """One line: torch's refusal text spans lines and ends with advice to load unsafely."""
    text = str(exc)
    if "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text:
        found = _GLOBAL.search(text)
        what = f" (it references the Python object {found.group(1)})" if found else ""
        return (
            f"checkpoint '{path}' is not a plain tensor checkpoint{what} and will not be unpickled: only "
            "tensors and plain Python values are loaded (weights_only=True); expected a last.pt written by "
            "`maskcl train`, or a state dict re-saved as plain tensors"
        )
    reason = " ".join(text.split()).split(". ")[0][:200] or type(exc).__name__  # first sentence
    return (
        f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {reason}); expected a whole last.pt "
        "written by `maskcl train` (a truncated copy? copy it again)"
    )


def load_model_state(model: nn.Module, state: dict[str, Any], source: Path | str) -> None:
    """Load ``state`` into ``model``; another architecture is a :class:`CheckpointError`.

    The message names the missing, unexpected and shape-mismatched keys (first few of each).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:SHOWN])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:SHOWN])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model: {'; '.join(shapes[:SHOWN])})")
        raise CheckpointError(
            f"checkpoint '{source}' is from another architecture than the configured model: "
            + "; ".join(parts)
            + " — check model.arch, method and model.fusion against the run that wrote it"
        )
    model.load_state_dict(state)


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, numpy, torch (CPU and CUDA) and the sampler generator states, weights_only-safe."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    rng: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        rng["generator"] = generator.get_state()
    return rng


def restore_rng(rng: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if generator is not None and "generator" in rng:
        generator.set_state(rng["generator"])
