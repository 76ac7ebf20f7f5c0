"""Reading an image file defensively: a regular file of bounded size, or a one-line reason, never a hang.

    read_file("cat.jpg", max_bytes=DEFAULT_MAX_BYTES) -> bytes
    file_stamp("cat.jpg") -> "100644:48213:1715000000123456789"   (type, size, mtime_ns; nothing read)

What is refused before a byte is read (``DecodeError``, one line):

* anything but a regular file, found by ``os.stat`` before opening: a FIFO (which
  would block ``open`` forever), a device (``/dev/zero`` would be read until
  memory runs out), a socket, a directory;
* a file whose size exceeds ``max_bytes`` (a 3 GB sparse file is refused by its
  apparent size, not read);
* a symlink loop, a broken symlink, a missing or unreadable file.

The file is then opened with ``O_NONBLOCK`` and checked again with ``fstat``,
so a file swapped for a FIFO or device between the two checks is refused too
instead of blocking. Paths may be ``str`` (non-UTF-8 names as surrogate
escapes), ``bytes`` or ``os.PathLike``.
"""

from __future__ import annotations

import errno
import os
import stat

from saliency_jax.data.base import DecodeError

DEFAULT_MAX_BYTES = 256 * 2**20
"""Largest file read (256 MiB: far above any photo; raise it with ``max_bytes`` / ``--max-bytes``)."""

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
_KINDS = (
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def size_text(n: int) -> str:
    """``n`` bytes for people: ``"3.0 GiB"``, ``"256 MiB"``, ``"812 bytes"``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"


def check_size(n: int, max_bytes: int) -> None:
    """A one-line DecodeError when ``n`` bytes exceed ``max_bytes``."""
    if n > max_bytes:
        raise DecodeError(f"file is too large: {size_text(n)} exceeds the {size_text(max_bytes)} limit (max_bytes)")


def _os_reason(path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if err.errno == errno.ENOENT:
        return f"broken symlink (to {os.readlink(path)!r})" if os.path.islink(path) else "no such file"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot read file ({err.strerror or err})"


def _check_regular(info: os.stat_result, max_bytes: int) -> None:
    for is_kind, reason in _KINDS:
        if is_kind(info.st_mode):
            raise DecodeError(reason)
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError("not a regular file")
    check_size(info.st_size, max_bytes)


def read_file(path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    Raises:
      DecodeError: not a regular file, over ``max_bytes``, empty, missing, a symlink
        loop, unreadable; the message is the reason, on one line.
    """
    try:
        _check_regular(os.stat(path), max_bytes)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise DecodeError(_os_reason(path, e)) from None
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            _check_regular(info, max_bytes)  # the same file as stat saw, or refused again
            data = f.read(info.st_size + 1)
            if len(data) > info.st_size:  # grew since fstat: read on, up to the limit
                data += f.read(max_bytes + 1 - len(data))
    except OSError as e:
        raise DecodeError(_os_reason(path, e)) from None
    check_size(len(data), max_bytes)
    if not data:
        raise DecodeError("file is empty (0 bytes)")
    return data


def file_stamp(path) -> str:
    """``"<type>:<size>:<mtime_ns>"`` of the file now (``os.stat``, nothing read); ``"error:<errno>"`` if none."""
    try:
        info = os.stat(path)
    except OSError as e:
        return f"error:{e.errno}"
    return f"{stat.S_IFMT(info.st_mode):o}:{info.st_size}:{info.st_mtime_ns}"
