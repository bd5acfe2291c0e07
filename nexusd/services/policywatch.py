# SPDX-License-Identifier: MIT
"""Tell cheaply whether the policy folders may have changed, with inotify.

The shadow report must follow any edit of the policy files at once, and a
guest's container list checks for one on every call: a ``stat`` of every
file costs more than the rest of the call. An inotify watch on each folder
(and on each file a symlink there points to) turns the check into one
non-blocking ``read`` of the queue: no event, no change. Anything unusual
(no inotify, a watch that cannot be set, an overflow, a folder deleted or
moved) makes :meth:`PolicyWatch.quiet` say "maybe changed", so the caller
falls back to comparing its ``stat`` signature.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PolicyWatch"]

#: Events that mean a folder's content or a file in it changed.
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
#: Bytes read from the event queue at a time.
_READ_SIZE = 65536


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes = [ctypes.c_int]
    init.restype = ctypes.c_int
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add.restype = ctypes.c_int
    return libc


class PolicyWatch:
    """Inotify watches on a few folders, re-armed after every change."""

    def __init__(self, folders: Iterable[Path]) -> None:
        """Watch *folders* (not recursively) once :meth:`arm` is called."""
        self._folders = tuple(folders)
        self._libc = _libc()
        self._fd: int | None = None
        self._closer: weakref.finalize[Any, PolicyWatch] | None = None

    def quiet(self) -> bool:
        """Whether nothing changed since :meth:`arm`, for certain.

        ``False`` means "maybe": not armed, an event came, or the queue
        could not be read. The watches are dropped then; :meth:`arm` sets
        them again.
        """
        if self._fd is None:
            return False
        try:
            os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            pass
        self.close()
        return False

    def arm(self) -> None:
        """Set fresh watches. Call it *before* taking the signature it
        stands for, so that a change in between is an event.

        Each folder is watched, and so is each of its entries (a file
        edited through a hard link elsewhere, or a subfolder's content, is
        then seen too); a symlink is watched at its target. If a watch
        cannot be set, or a symlink points to another symlink, nothing is
        watched and :meth:`quiet` keeps saying "maybe".
        """
        self.close()
        libc = self._libc
        if libc is None:
            return
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            return
        self._fd = fd
        self._closer = weakref.finalize(self, _close_fd, fd)
        for folder in self._folders:
            if not self._add(folder) or not self._add_entries(folder):
                self.close()
                return

    def _add(self, path: str | Path) -> bool:
        if self._fd is None or self._libc is None:
            return False
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _MASK)
        return bool(wd >= 0)

    def _add_entries(self, folder: Path) -> bool:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            return False
        for entry in entries:
            if entry.is_symlink():
                try:
                    hop = os.path.join(folder, os.readlink(entry.path))
                except OSError:
                    return False
                if os.path.islink(hop):
                    return False
            if not self._add(entry.path):
                return False
        return True

    def close(self) -> None:
        """Drop the watches (and their descriptor)."""
        if self._closer is not None:
            self._closer()
            self._closer = None
        self._fd = None


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
