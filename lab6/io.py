"""Atomic file and folder writes: readers never see a half-written file."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import Lab6Error

_UMASK = os.umask(0)
os.umask(_UMASK)


def _not_a_folder(path: Path) -> Path | None:
    """The first of `path` and its parents that exists but is not a folder, else None."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Check that folder `path` exists or could be created, and is writable, without creating anything."""
    path = Path(path)
    blocker = _not_a_folder(path)
    if blocker is not None:
        what = "is a file, not a folder" if blocker == path else f"cannot be created: {blocker} is a file"
        raise Lab6Error(f"{path}: output folder {what}; choose another output folder")
    _probe(next(p for p in (path, *path.absolute().parents) if p.exists()), path)
    return path


def _probe(folder: Path, path: Path) -> None:
    """Raise Lab6Error (naming `path`) unless a file can be created in `folder`."""
    try:
        tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True).close()
    except OSError as e:
        raise Lab6Error(f"{path}: output folder is not writable ({e.strerror or e}); "
                        f"choose another output folder") from None


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create folder `path` if needed and check that files can be written into it."""
    path = check_writable_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Lab6Error(f"{path}: output folder is not writable ({e.strerror or e}); "
                        f"choose another output folder") from None
    _probe(path, path)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_image(path: str | os.PathLike, image) -> None:
    """Save a PIL image as PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` onto `dst`; an existing `dst` is first renamed to `.<name>.old`, then deleted."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
