"""Writing files so that a reader never sees half of one: write a temp file beside it, then rename.

A kill leaves at most a `.tmp-*` file behind, never a torn target; `remove_stale_temp_files`
clears those once the folder's one writer holds it. Files get the mode any new file gets here
(0666 less the umask), so others on shared storage can read checkpoints and results.
Also here: the flock that keeps a second writer out of an output folder.
"""
import fcntl
import glob
import hashlib
import io
import os
import tempfile

from utils.errors import RunError, first_line

TEMP_PREFIX = ".tmp-"


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, data: bytes | str) -> None:
    """Write `data` to a temp file in the same folder, then rename: the file is whole or absent.
    A failed write (a full disk, a lost mount) is a RunError naming the file; what was there stays."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _new_file_mode())  # mkstemp makes 0600
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise RunError(f"{path}: could not write ({e.strerror or e}); the file on disk, if any, is unchanged") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def check_writable(folder: str, key: str) -> None:
    """Create `folder` and write (then remove) a temp file in it, so that a run whose outputs could not be saved
    (a read-only mount, no permission, a full disk) stops at start with one line naming `key`."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise RunError(f"{key}: cannot write in {folder} ({e.strerror or e}); choose another {key}") from None


def try_flock(path: str) -> int | None:
    """An exclusive flock on a file or folder (no file is made): its fd, or None while another holder has it. On a
    file system without flock (some network mounts) the fd comes back unlocked: there is no guard there."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        pass
    return fd


_HELD = {}  # real path -> fd: the output folders this process writes (hold_folder)


def hold_folder(folder: str, key: str) -> None:
    """Keep other processes out of an output folder (the one named by `key`) until release_folders; a link to a
    folder is that folder. The kernel drops the lock when this process ends, however it ends."""
    real = os.path.realpath(folder)
    if real in _HELD:
        return
    fd = try_flock(real)
    if fd is None:
        link = "" if real == os.path.abspath(folder) else f" (a link to {real})"
        raise RunError(f"{key}: {folder}{link} is in use by another process; two runs cannot write one folder "
                       f"(choose another {key})")
    _HELD[real] = fd


def release_folders() -> None:
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()


def os_error_line(e: OSError) -> str:
    """One line for an OSError no caller expected (a file that could not be read or written)."""
    name = e.filename if e.filename is not None else "a file"
    return f"{name}: {e.strerror or first_line(e)}"


def atomic_save(obj, path: str) -> None:
    """torch.save through atomic_write."""
    import torch  # here, so that the dataset builders, which use this module's locks, do not load torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove the temp files that killed writers left in `folder`; call only while holding the folder."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*")):
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
