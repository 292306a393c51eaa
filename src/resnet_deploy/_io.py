"""Files are written under a temporary name and renamed, so nothing half-written looks complete;
files are read only when they are regular files (a FIFO or a device would block or never end)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UsageError

#: Protobuf's hard limit is 2 GiB; above this size ONNX weights go to an external data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
_UMASK = os.umask(0)
os.umask(_UMASK)
#: ``.NAME.PID-XXXXXXXX.tmp`` (and, from older versions, ``.NAME.XXXXXXXX.tmp``): what ``atomic_path`` writes.
_TEMPORARY = re.compile(r"^\..+\.(?:(\d+)-)?[a-z0-9_]{8}\.tmp$")
_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (ours counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files (``.NAME.*.tmp``) that killed runs left in ``directory``: those
    whose writer process is gone. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMPORARY.match(p.name)
        if not m or (m.group(1) is not None and pid_alive(int(m.group(1)))):
            continue
        try:
            if p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def _clean_once(directory: Path) -> None:
    """``remove_stale_temporaries`` the first time this process writes into ``directory``."""
    key = os.path.realpath(directory)
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    remove_stale_temporaries(directory)


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


def file_problem(path: str | os.PathLike[str], st: os.stat_result | None = None) -> str | None:
    """Why ``path`` cannot be read as a file (None when it is a regular file): ``does not exist``,
    ``is a directory``, ``is not a regular file (a FIFO)``... Symlinks are followed."""
    if st is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "does not exist" if not os.path.islink(path) else "is a broken symbolic link"
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    return f"is not a regular file ({_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')})"


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a Path when it is a regular file; else UsageError ``{what} '{path}' {why}``."""
    problem = file_problem(path)
    if problem is not None:
        raise UsageError(f"{what} '{os.fspath(path)}' {problem}")
    return Path(path)


def open_regular(path: str | os.PathLike[str], what: str = "file"):
    """Open ``path`` for binary reading, refusing anything but a regular file without blocking: a
    FIFO is opened non-blocking and refused after ``fstat`` (no check-then-open race)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UsageError(f"{what} '{os.fspath(path)}' {file_problem(path) or 'does not exist'}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} '{os.fspath(path)}' is a directory, not a file") from None
    except OSError as exc:
        raise UsageError(f"{what} '{os.fspath(path)}' cannot be read ({exc.strerror or exc})") from None
    try:
        problem = file_problem(path, os.fstat(fd))
        if problem is not None:
            raise UsageError(f"{what} '{os.fspath(path)}' {problem}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_overwriting_inputs(outputs: Iterable[str | os.PathLike[str]],
                              inputs: Iterable[str | os.PathLike[str]], option: str = "--output") -> None:
    """UsageError when an existing output is the same file as an input (device and inode: symlinks,
    hard links and ``..`` all count), since writing it would destroy the input."""
    existing = {}
    for out in outputs:
        ident = _identity(out)
        if ident is not None:
            existing[ident] = out
    if not existing:
        return
    for path in inputs:
        out = existing.get(_identity(path))
        if out is not None:
            raise UsageError(f"{option} '{os.fspath(out)}' is an input ('{os.fspath(path)}'); writing it would "
                             f"destroy it: choose another {option}")


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) or raise a UsageError saying why it cannot be written."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory '{p}': {exc.strerror or exc}") from exc
    if not os.access(p, os.W_OK):
        raise UsageError(f"output directory '{p}' is not writable")
    return p


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    The temporary name carries this process's id (``.NAME.PID-XXXXXXXX.tmp``): the first write of a
    later run into the same directory removes what a killed run left there."""
    final = Path(final)
    ensure_dir(final.parent)
    _clean_once(final.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}-", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(final: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_json(final: str | os.PathLike[str], obj: Any) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(final)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def save_onnx(model: Any, path: str | os.PathLike[str]) -> Path:
    """Save an ONNX ModelProto atomically; weights go to ``<name>.data`` beside it when the model
    nears protobuf's 2 GiB limit."""
    import onnx

    path = Path(path)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    with atomic_path(path) as tmp:
        if external:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
    return path
