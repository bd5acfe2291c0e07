# SPDX-License-Identifier: MIT
"""Make the disk misbehave under nexusd: a folder that fills up, a file
system that turns read-only on an error, as the kernel does it.

Both need root (mount, loop devices). :func:`mount_rights` says whether
this process has them; the tests that need them skip without.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "ext4_image",
    "fill",
    "mount_rights",
    "small_tmpfs",
    "turn_read_only",
]


def _run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, check=False)


def mount_rights(probe: Path) -> str | None:
    """None if tmpfs and loop mounts work here, else why not."""
    probe.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip() or "mount failed"
    _run("umount", str(probe))
    if _run("losetup", "-f").returncode != 0:
        return "no free loop device"
    return None


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of *size* (``64k``) over *path* for the block."""
    path.mkdir(parents=True, exist_ok=True)
    done = _run(
        "mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)
    )
    if done.returncode != 0:
        msg = f"mount tmpfs on {path}: {done.stderr.decode().strip()}"
        raise OSError(msg)
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))


def fill(folder: Path, name: str = "filler") -> Path:
    """Write a file in *folder* until the file system is full."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def ext4_image(
    path: Path, image: Path, *, fresh: bool = True, size_mib: int = 16
) -> Iterator[Path]:
    """Mount an ext4 image over *path* with ``errors=remount-ro``: a new
    one, or (*fresh* false) *image* again after ``e2fsck`` repaired it,
    as an administrator would after a disk error."""
    if fresh:
        with image.open("wb") as f:
            f.truncate(size_mib << 20)
        done = _run("mkfs.ext4", "-q", "-F", str(image))
    else:
        done = _run("e2fsck", "-f", "-y", str(image))
        # 1: errors corrected; 0: none found.
        if done.returncode in (0, 1):
            done = subprocess.CompletedProcess(done.args, 0, b"", b"")
    if done.returncode != 0:
        raise OSError(done.stderr.decode().strip())
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(path))
    if done.returncode != 0:
        raise OSError(done.stderr.decode().strip())
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))


def turn_read_only(path: Path) -> None:
    """Make the ext4 file system mounted at *path* hit an error, which
    (with ``errors=remount-ro``) turns it read-only for every writer, as
    a failing disk does.

    Raises:
        OSError: *path* is not such a mount.
    """
    source = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(path.resolve()) and fields[2] == "ext4":
            source = fields[0]
    if not source:
        msg = f"no ext4 mount at {path}"
        raise OSError(msg)
    name = Path(source).name
    found = glob.glob(f"/sys/fs/ext4/{name}/trigger_fs_error")
    if not found:
        msg = f"no trigger_fs_error for {name}"
        raise OSError(msg)
    Path(found[0]).write_text("reliability suite: simulated disk error\n")
