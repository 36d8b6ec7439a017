"""Writing files without following a symbolic link out of the place they belong to.

Every file evsys writes itself goes through here: run files, checkpoints, the summary and its
plot, conclusions, the index folder and its files, configs the MCP server writes. Each write
names its `root` (the workspace, or the run directory) and is refused with UnsafePathError when
- its last component is a symbolic link (opened with O_NOFOLLOW), or
- the folder it goes in, once opened, lies outside the root: the folder's real path is read
  from the open descriptor, so what is checked is what is written into.
A rename replaces a link at the target, it never writes through one. Folders are created one
component at a time, each checked the same way. Atomic writes go to a temporary file beside
the target (created with O_EXCL) renamed over it, and the temporary file is removed on any
failure, a full disk included; an append that cannot be written whole is cut back, so a full
disk leaves no partial line.

The file-name rules live here too: SAFE_NAME (what a run, benchmark or split name may be)
and NAME_MAX_BYTES (the longest name a file system takes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from pathlib import Path
from typing import Iterator

from evsys_core.errors import EvsysError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # use .fullmatch
NAME_MAX_BYTES = 255
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UnsafePathError(EvsysError, PermissionError):
    """A write would follow a symbolic link out of the workspace or the run directory (an
    OSError too, so every "cannot write" path reports it)."""


def long_name(path: str | os.PathLike) -> str | None:
    """The first component of `path` longer than NAME_MAX_BYTES, or None."""
    return next((part for part in str(path).replace("\\", "/").split("/")
                 if len(part.encode(errors="surrogateescape")) > NAME_MAX_BYTES), None)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def root_for(path: str | os.PathLike, workspace: str | os.PathLike) -> Path:
    """The root that writes at or under `path` must stay in: the workspace when `path` names a
    place inside it (so a link planted there cannot lead out), else the nearest existing folder
    of `path` (a place outside the workspace, named explicitly)."""
    ws, p = os.path.abspath(workspace), os.path.abspath(path)
    if _inside(p, ws):
        return Path(ws)
    while not os.path.isdir(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    return Path(p)


def _real(fd: int, fallback: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no procfs
        return os.path.realpath(fallback)


def _open_dir(path: str, root: str | os.PathLike | None, what: str) -> int:
    """An open descriptor of the folder `path`, checked to lie inside `root`."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if root is not None:
        real, top = _real(fd, path), os.path.realpath(root)
        if not _inside(real, top):
            os.close(fd)
            raise UnsafePathError(
                f"refusing to write {what}: {path} leads to {real}, outside {top} (a symbolic "
                "link?); remove the link, or point evsys at a real folder inside")
    return fd


@contextlib.contextmanager
def _folder(path: str | os.PathLike, root: str | os.PathLike | None) -> Iterator[tuple[int, str]]:
    """(descriptor of the checked folder of `path`, `path`'s last component)."""
    full = os.path.abspath(path)
    fd = _open_dir(os.path.dirname(full), root, full)
    try:
        yield fd, os.path.basename(full)
    finally:
        os.close(fd)


def _no_link(e: OSError, path: str | os.PathLike) -> OSError:
    if e.errno == errno.ELOOP:
        return UnsafePathError(f"refusing to write {path}: it is a symbolic link; remove it")
    return e


def open_fd(path: str | os.PathLike, flags: int, root: str | os.PathLike | None = None,
            mode: int = 0o644) -> int:
    """os.open(path, flags) that never follows a link at `path` nor leaves `root`."""
    with _folder(path, root) as (dfd, name):
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as e:
            raise _no_link(e, path) from None


def _write_all(fd: int, data: bytes, path: str | os.PathLike) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]
    except OSError as e:  # name the file: os.write does not
        raise OSError(e.errno, e.strerror, str(path)) from None


def append(path: str | os.PathLike, data: bytes | str, root: str | os.PathLike | None = None) -> None:
    """Append `data` with one write; if it cannot all be written the file is cut back."""
    data = data.encode() if isinstance(data, str) else data
    fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, root)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def write_new(path: str | os.PathLike, data: bytes | str, root: str | os.PathLike | None = None) -> None:
    """Create `path` (it must not exist) holding `data`; nothing is left if that fails."""
    data = data.encode() if isinstance(data, str) else data
    with _folder(path, root) as (dfd, name):
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=dfd)
        except OSError as e:
            raise _no_link(e, path) from None
        try:
            try:
                _write_all(fd, data, path)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
            raise


def write_atomic(path: str | os.PathLike, data: bytes | str, root: str | os.PathLike | None = None) -> None:
    """Replace `path` with `data` through a temporary file beside it and a rename."""
    data = data.encode() if isinstance(data, str) else data
    with _folder(path, root) as (dfd, name):
        tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dfd)
        try:
            try:
                _write_all(fd, data, path)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def rewrite_in_place(path: str | os.PathLike, data: bytes | str, root: str | os.PathLike | None = None) -> None:
    """Overwrite an existing small file's bytes: needs no new block, so it works on a full
    disk where write_atomic cannot (used only for the final run.json of a run that hit one)."""
    data = data.encode() if isinstance(data, str) else data
    fd = open_fd(path, os.O_WRONLY, root)
    try:
        os.ftruncate(fd, 0)
        _write_all(fd, data, path)
    finally:
        os.close(fd)


def makedirs(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Create folder `path` and its missing parents, each inside `root`; return `path`."""
    full = os.path.abspath(path)
    missing, p = [], full
    while not os.path.lexists(p) and p != os.path.dirname(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        with _folder(d, root) as (dfd, name):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=dfd)
    os.close(_open_dir(full, root, full))  # exists, is a folder (NotADirectoryError), is inside
    return Path(path)


def mkdir_new(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Create folder `path`, which must not exist yet (FileExistsError), inside `root`."""
    with _folder(path, root) as (dfd, name):
        os.mkdir(name, 0o755, dir_fd=dfd)
    return Path(path)


def problem(path: str | os.PathLike, root: str | os.PathLike) -> str | None:
    """Why writing at or under `path` would leave `root` (through a link), or None: a check
    made before anything is written, so a refusal leaves nothing behind."""
    p = os.path.abspath(path)
    while not os.path.lexists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    real, top = os.path.realpath(p), os.path.realpath(root)
    if not _inside(real, top):
        return f"{p} leads to {real}, outside {top} (a symbolic link?); remove the link"
    return None
