"""Safe output files: nothing half-written, nothing overwritten by accident, no input ever replaced.

Dumps hold passwords and keys, so every file we create is mode 0600. On Linux a file is created
nameless (O_TMPFILE) in the destination folder and linked into place (linkat through
/proc/self/fd/N) only when complete, so even a SIGKILL leaves nothing behind. Where the file
system lacks O_TMPFILE the file is written under a hidden temporary name
(``.NAME.wincrash-partial-PID``) and renamed; an exception, Ctrl-C, SIGTERM or SIGHUP removes it,
and the next run removes such files of processes that no longer exist (``sweep_stale``).

An output that resolves to the same file as an input (same device and inode: symlinks, hard links,
``./x`` spellings) is refused whatever ``force`` says: inputs are never modified.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from wincrash.errors import WincrashError, describe_os_error

STALE = re.compile(r"^\..+\.wincrash-(?:partial|rewrite|elf)-(?P<pid>\d+)$")
_NAMED: dict[int, Path] = {}  # descriptor -> hidden temporary name, for files made without O_TMPFILE


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_not_input(path: Path, inputs: Iterable[Path | str] = ()) -> None:
    """WincrashError "the output is the input file" when ``path`` is one of ``inputs`` (same st_dev and
    st_ino, so symlinks, hard links and other spellings count). A missing ``path`` is never an input."""
    try:
        out = os.stat(path)
    except OSError:
        return
    for source in inputs:
        with contextlib.suppress(OSError):
            st = os.stat(source)
            if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
                raise WincrashError(f"{path}: the output is the input file ({source}); choose another output name")


def check_destination(path: Path, force: bool, inputs: Iterable[Path | str] = ()) -> None:
    """Refuse early (before any slow or irreversible work) when the output cannot or must not be written.

    Checks, in order: not one of ``inputs`` (even with ``force``), not a folder, not "-", not an
    existing device, FIFO or socket (even with ``force``: replacing /dev/null with a dump would break
    the host), not existing (unless ``force``), the parent folder exists and is writable, and an
    existing file can be replaced there (a sticky folder such as /tmp refuses to replace another user's
    file).
    """
    check_not_input(path, inputs)
    if path.is_dir():
        raise WincrashError(f"{path}: is a directory, give a file name")
    if str(path) == "-":
        raise WincrashError("-: a dump cannot be written to standard output: give a file name")
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode  # follows symlinks: a link to /dev/null is /dev/null
        if not stat.S_ISREG(mode):
            raise WincrashError(f"{path}: not a regular file (a device, FIFO or socket): give a file name; it is "
                                "never replaced, even with --force")
    if (path.exists() or path.is_symlink()) and not force:
        raise WincrashError(f"{path}: already exists (use --force to overwrite)")
    parent = _parent(path)
    if not parent.is_dir():
        raise WincrashError(f"{parent}: directory does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WincrashError(f"{parent}: directory is not writable")
    with contextlib.suppress(OSError):
        folder, existing = os.stat(parent), os.lstat(path)
        uid = os.geteuid()
        if folder.st_mode & stat.S_ISVTX and uid != 0 and uid not in (existing.st_uid, folder.st_uid):
            raise WincrashError(f"{path}: belongs to another user in a sticky folder ({parent}), so it cannot be "
                                "replaced: choose another output name")


def check_free_space(path: Path, needed: int) -> None:
    """Refuse before writing when the destination filesystem cannot hold ``needed`` bytes."""
    parent = _parent(path)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise WincrashError(
            f"{parent}: not enough free space: need {needed / 2**20:,.0f} MiB, have {free / 2**20:,.0f} MiB"
        )


def partial_path(path: Path) -> Path:
    """The hidden temporary name of ``path`` for this process (files made without O_TMPFILE)."""
    return path.with_name(f".{path.name}.wincrash-partial-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def sweep_stale(folder: Path) -> list[Path]:
    """Remove the hidden partial files (``.NAME.wincrash-{partial,rewrite,elf}-PID``) in ``folder`` whose
    process no longer exists (a SIGKILL, a power cut); return what was removed. Never raises."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = STALE.match(name)
        if not match or int(match.group("pid")) == os.getpid() or _alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(folder / name)
            removed.append(folder / name)
    if removed:
        from wincrash.render import warn  # noqa: PLC0415 - a leaf module; keeps this one import-light

        warn(f"removed {len(removed)} partial file(s) left by an interrupted earlier run in {folder}: "
             + ", ".join(p.name for p in removed))
    return removed


def new_file(path: Path) -> tuple[int, Path | None]:
    """A new private (0600) read-write file in ``path``'s folder: (descriptor, hidden name or None).

    None: a nameless O_TMPFILE, gone when the process dies; link it with ``publish``. Otherwise the
    file is ``partial_path(path)`` (the file system has no O_TMPFILE).
    """
    parent = _parent(path)
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(parent, flag | os.O_RDWR, 0o600), None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    tmp = partial_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # our own pid's leftover
    return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), tmp


def _link_fd(fd: int, path: Path) -> None:
    """linkat(/proc/self/fd/FD, path, AT_SYMLINK_FOLLOW): name the nameless file. A directory descriptor is
    passed so that Python calls linkat (its plain link() would link the /proc symlink itself: EXDEV)."""
    folder = os.open(_parent(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def publish(fd: int, tmp: Path | None, path: Path, force: bool) -> None:
    """Give the complete file behind ``fd`` (from ``new_file``) the name ``path``; ``force`` replaces a file there."""
    if tmp is None:
        if not force:
            try:
                _link_fd(fd, path)  # atomic, and never replaces what appeared meanwhile
                return
            except FileExistsError:
                raise WincrashError(f"{path}: already exists (use --force to overwrite)") from None
        tmp = partial_path(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _link_fd(fd, tmp)
    elif (path.exists() or path.is_symlink()) and not force:
        raise WincrashError(f"{path}: already exists (use --force to overwrite)")
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False, inputs: Iterable[Path | str] = ()) -> Iterator[BinaryIO]:
    """Yield a private file that becomes ``path`` only when the block ends without an exception.

    ``inputs``: files ``path`` must not be (checked before and again just before the rename).
    :raises WincrashError: see ``check_destination``; every OSError of writing, one line.
    """
    path = Path(path)
    inputs = list(inputs)
    check_destination(path, force, inputs)
    sweep_stale(_parent(path))
    try:
        fd, tmp = new_file(path)
    except OSError as exc:
        raise WincrashError(f"cannot write output: {describe_os_error(exc, path)}") from None
    done = False
    if tmp is not None:
        _NAMED[fd] = tmp
    try:
        with os.fdopen(fd, "r+b") as fh:  # r+: writers re-read pages they patch
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            check_not_input(path, inputs)
            publish(fh.fileno(), _NAMED.get(fd), path, force)
            done = True
    except OSError as exc:
        raise WincrashError(f"cannot write output: {describe_os_error(exc, path)}") from exc
    finally:
        named = _NAMED.pop(fd, None)
        if not done and named is not None:
            with contextlib.suppress(OSError):
                os.unlink(named)


@contextlib.contextmanager
def replacement(fh: BinaryIO, path: Path) -> Iterator[BinaryIO]:
    """A second private file that takes the place of ``fh`` (an ``atomic_output`` of ``path``) when the block
    ends well: what ``atomic_output`` then publishes is the replacement's content. ``fh`` keeps its
    descriptor number (dup2), so holders of ``fh.fileno()`` follow."""
    fd, tmp = new_file(path.with_name(path.name + ".rewrite"))
    ok = False
    try:
        with os.fdopen(fd, "r+b") as new:
            yield new
            new.flush()
            os.fsync(new.fileno())
            fh.flush()
            old_name = _NAMED.get(fh.fileno())
            os.dup2(new.fileno(), fh.fileno())
            fh.seek(0)
            if old_name is not None and tmp is not None:
                os.replace(tmp, old_name)
            ok = True
    finally:
        if tmp is not None and not ok:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
