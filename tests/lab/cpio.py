"""Host side, build path: write a ``newc`` cpio archive, the format the kernel unpacks as initramfs.

We write the archive ourselves instead of calling ``cpio`` so that the lab needs no root
to create ``/dev/console``, keeps no staging tree on disk, and produces the same bytes for
the same input (fixed mtimes, sorted entries), which keeps the build cache key honest.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member; ``data`` is the file body or, for a symlink, its target."""

    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


class Sink(Protocol):
    """Anything with a binary ``write``: a file, or a hasher adapter."""

    def write(self, data: bytes, /) -> object: ...


class Archive:
    """An in-memory initramfs tree keyed by absolute guest path.

    Parent directories are created implicitly, so callers only name what they put in.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, path: str) -> bool:
        return _norm(path) in self._entries

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        """Add a directory (and its parents).

        Raises:
            ValueError: ``path`` already exists as something other than a directory.
        """
        self._put(path, Entry(stat.S_IFDIR | mode))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file, replacing an earlier file at the same path.

        Raises:
            ValueError: ``path`` already exists as a directory.
        """
        self._put(path, Entry(stat.S_IFREG | mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        """Add a symbolic link.

        Raises:
            ValueError: ``path`` already exists as a directory.
        """
        self._put(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node (needs no privileges: it is only bytes here).

        Raises:
            ValueError: ``path`` already exists as a directory.
        """
        self._put(path, Entry(stat.S_IFCHR | mode, rdev=(major, minor)))

    def write(self, out: Sink) -> None:
        """Serialise every entry, parents first, followed by the trailer."""
        for ino, path in enumerate(sorted(self._entries), start=1):
            _write_entry(out, ino, path.lstrip("/"), self._entries[path])
        _write_entry(out, 0, _TRAILER, Entry(0))

    def _put(self, path: str, entry: Entry) -> None:
        key = _norm(path)
        for parent in reversed(PurePosixPath(key).parents):
            if str(parent) == "/":
                continue
            existing = self._entries.setdefault(str(parent), Entry(stat.S_IFDIR | 0o755))
            if not stat.S_ISDIR(existing.mode):
                raise ValueError(f"{parent} is not a directory (adding {key})")
        old = self._entries.get(key)
        if old is not None and stat.S_ISDIR(old.mode) != stat.S_ISDIR(entry.mode):
            raise ValueError(f"{key} already exists with another file type")
        self._entries[key] = entry


def _norm(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"archive paths are absolute guest paths, got {path!r}")
    return str(PurePosixPath(path))


def _write_entry(out: Sink, ino: int, name: str, entry: Entry) -> None:
    encoded = name.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        0,  # uid: root
        0,  # gid: root
        2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
        0,  # mtime: fixed, for reproducible archives
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(encoded),
        0,  # check: unused by newc
    )
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    out.write(header + encoded + _pad(len(header) + len(encoded)))
    out.write(entry.data + _pad(len(entry.data)))


def _pad(length: int) -> bytes:
    """newc aligns both the header+name and the body on 4 bytes."""
    return b"\0" * (-length % 4)
