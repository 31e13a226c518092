"""Writing files so that nothing is lost.

Every file sprout writes (datasets, checkpoints, pictures) goes to a temporary name beside its
destination, is flushed and fsynced, and only then renamed over the destination; the folder is
fsynced after the rename. A crash, Ctrl-C, SIGTERM or a full disk part-way through leaves the
previous file (or none), never a half-written one, and a power cut after the rename cannot leave a
renamed but empty file, because the data reached the disk before the name did. A folder written as
a whole (an exported model) is filled under a temporary name too, and renamed into place once all
of it is on disk.
"""
import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from configurator import UserError


def fsync_dir(folder):
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def check_folder(folder, flag):
    """Refuse an output folder whose path runs into a file, in one line that names the flag to change."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"{path} is a file, not a folder; choose another {flag}")
            return


def file_size(n):
    """A number of bytes for people: '1.5 GB', '320.4 kB', '12 bytes'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def disk_full_error(path, needed=None, at_least=False, kept=False):
    """The one line a user reads when the disk fills up while writing `path`: how much space was
    needed (bytes; at least that many if at_least), and whether the previous file there was kept."""
    size = f" ({'at least' if at_least else 'about'} {file_size(needed)} are needed)" if needed else ""
    left = "the previous one is kept" if kept else "nothing half-written was left behind"
    return UserError(f"the disk is full: could not write {path}{size}; {left}; free some space and "
                     "run again")


@contextmanager
def atomic_write(path, mode="wb"):
    """Yield an open file on a temporary name; on success it replaces `path`, durably. On any
    failure (an exception, Ctrl-C) the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full_error(path, kept=path.exists()) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text):
    with atomic_write(path, "w") as f:
        f.write(text)


@contextmanager
def staged_outputs(folder, names):
    """Yield {name: temporary path} for files written together (a dataset's .bin files and its
    meta.json); they are fsynced and renamed into place, in the order of `names`, only if the block
    finishes. An interrupted run leaves the previous set (or nothing), never a .bin that looks
    complete: so meta.json, which marks a dataset as ready, goes last."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = {n: folder / f"{n}.tmp" for n in names}
    try:
        yield tmp
        for n in names:
            fsync_file(tmp[n])
        for n in names:
            os.replace(tmp[n], folder / n)
        fsync_dir(folder)
    except OSError as e:
        if e.errno == errno.ENOSPC:  # what was written so far is a lower bound of what is needed
            needed = sum(p.stat().st_size for p in tmp.values() if p.exists())
            raise disk_full_error(folder, needed, at_least=True,
                                  kept=any((folder / n).exists() for n in names)) from None
        raise
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        if created and folder.exists() and not any(folder.iterdir()):
            folder.rmdir()  # a failed first run leaves no empty folder behind


@contextmanager
def staged_folder(folder, replace=False):
    """Yield a temporary folder beside `folder` to fill. When the block finishes, every file in it is
    fsynced and it takes `folder`'s name (an existing `folder` is replaced only if `replace`); on any
    failure it is removed and `folder` is untouched: never a half-written folder under that name."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if folder.exists() and not replace:
        raise UserError(f"{folder} already exists; choose another name or replace it")
    shutil.rmtree(tmp, ignore_errors=True)  # left behind by a run that was killed
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_file(path)
        fsync_dir(tmp)
        if folder.exists():  # a folder cannot be renamed over another: move the old one aside first
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full_error(folder) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
