"""An export directory holds one generation: the artifacts and the ``manifest.json`` of one run.

An export is built in a staging directory beside its target (``.NAME.staging-PID-XXXX``) and swapped
in when it is complete, so a run that is killed, interrupted or fails leaves the previous generation
as it was, and a run that finishes leaves only its own artifacts (a re-export without ``--fp16`` no
longer keeps the old FP16 file)::

    with Generation(target) as gen:      # stale staging directories of killed runs are removed here
        ...write into gen.staging...
        gen.commit()                     # the swap; without it the staging directory is removed

The swap exchanges the two directories in one ``renameat2(RENAME_EXCHANGE)`` where the kernel and the
filesystem offer it (Linux 3.15+, ext4, xfs, btrfs, tmpfs), and otherwise renames the old generation
aside (``.NAME.old-PID-XXXX``), renames the new one in and removes the old: a kill between those two
renames leaves the old generation aside, and the next run puts it back before it does anything else.

Files in the target directory that are not the previous generation's (notes, a timing cache, another
model's ONNX) are carried into the new generation (hard links, else copies); the previous generation
is what its manifest lists plus the artifact files of the same model (``resnet18.fp16.onnx`` beside a
manifest listing ``resnet18.onnx``). A subdirectory is refused up front (an export replaces its whole
directory, so ``--output`` must not be a folder of other things).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable

from .._io import pid_alive, remove_stale_temporaries
from ..artifacts import MANIFEST_NAME, read_manifest
from ..errors import ResnetDeployError, UsageError

log = logging.getLogger(__name__)

STAGING, ASIDE = "staging", "old"
#: Names an export (or ``calibrate``/``build`` into an export directory) writes: they belong to one
#: generation and are not carried into the next.
_GENERATION_FILE = re.compile(r"(\.onnx|\.onnx\.data|\.engine|\.plan|\.engine\.json|\.plan\.json|\.parity\.json|"
                              r"\.calib\.json|\.calib\.cache)$", re.IGNORECASE)


def _work_dir_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.({STAGING}|{ASIDE})-(\d+)-[0-9a-f]+$")


def _work_dir(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False when the
    platform or filesystem cannot, so the caller falls back to two renames."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover(target: Path) -> None:
    """Undo what killed runs left beside ``target``: put an old generation back when a swap was cut
    between its two renames, then remove staging and aside directories of processes that are gone."""
    parent, pattern = target.parent, _work_dir_re(target.name)
    if not parent.is_dir():
        return
    stale: list[tuple[str, Path]] = []
    for entry in parent.iterdir():
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and not pid_alive(int(m.group(2))):
            stale.append((m.group(1), entry))
    if not target.exists():
        aside = [p for kind, p in stale if kind == ASIDE]
        if aside:
            newest = max(aside, key=lambda p: p.stat().st_mtime)
            os.rename(newest, target)
            log.warning("restored the previous export into '%s' (a run was killed while swapping it)", target)
            stale = [(k, p) for k, p in stale if p != newest]
    for _, path in stale:
        log.info("removing '%s', left by a killed export", path)
        shutil.rmtree(path, ignore_errors=True)
    if target.is_dir():
        remove_stale_temporaries(target)


def foreign_entries(target: Path) -> list[Path]:
    """Entries of an existing export directory that no export wrote (carried into the next one)."""
    if not target.is_dir():
        return []
    listed: set[str] = {MANIFEST_NAME}
    try:
        manifest = read_manifest(target)
    except ResnetDeployError:
        manifest = None
    for entry in (manifest or {}).get("artifacts", []):
        listed.add(str(entry.get("path")))
        if entry.get("engine_manifest"):
            listed.add(str(entry["engine_manifest"]))
    # files of the same model that the manifest does not list (left by a killed pre-staging run, or by
    # calibrate/build) belong to the old generation too; another model's files are not ours to drop
    stems = {name.split(".")[0] for name in listed if name != MANIFEST_NAME}

    def ours(name: str) -> bool:
        return name in listed or (bool(_GENERATION_FILE.search(name)) and name.split(".")[0] in stems)

    return sorted(p for p in target.iterdir() if not ours(p.name)
                  and not (p.name.startswith(".") and p.name.endswith(".tmp")))


def check_target(target: Path) -> None:
    """Refuse, before any work, a target that is not a directory an export may replace."""
    if target.exists() and not target.is_dir():
        raise UsageError(f"output '{target}' exists and is not a directory")
    resolved, cwd = target.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"output '{target}' is the current directory or holds it; an export replaces its whole "
                         "directory: give a subdirectory, e.g. --output exports/NAME")
    for p in foreign_entries(target):
        if p.is_dir() and not p.is_symlink():
            raise UsageError(f"output directory '{target}' holds the folder '{p.name}', which no export wrote; an "
                             "export replaces its whole directory: choose an empty or an export directory")
    # the swap renames entries of the parent: it must be writable (created here when missing)
    parent = target.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot create output directory '{target}': '{ancestor}' is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write the output directory '{target}': '{ancestor}' is not writable")


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Generation:
    """The staging directory of one export into ``target``; ``commit()`` swaps it in."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        target = Path(target)
        self.target = Path(os.path.realpath(target)) if target.is_symlink() or not target.name else target
        self.staging = _work_dir(self.target, STAGING)
        self.committed = False
        self._created: list[Path] = []

    def __enter__(self) -> "Generation":
        check_target(self.target)
        missing = []
        p = self.target.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output directory '{self.target}': {exc.strerror or exc}") from exc
        self._created = missing  # deepest first: removed again (when empty) if the run fails
        recover(self.target)
        self.staging.mkdir()
        for p in foreign_entries(self.target):
            _link_or_copy(p, self.staging / p.name)
        return self

    def carry(self, names: Iterable[str]) -> None:
        """Copy these files of the current generation into the new one (a calibration cache to reuse)."""
        for name in names:
            src = self.target / name
            if src.is_file() and not (self.staging / name).exists():
                shutil.copy2(src, self.staging / name)

    def staged(self, path: str | os.PathLike[str] | None) -> Path | None:
        """``path`` inside the target, moved into the staging directory (other paths unchanged)."""
        if path is None:
            return None
        p = Path(path)
        try:
            rel = p.resolve().relative_to(self.target.resolve())
        except ValueError:
            return p
        return self.staging / rel

    def commit(self) -> None:
        """Make the staging directory the target, in one atomic swap where the platform allows."""
        if not self.target.exists():
            os.rename(self.staging, self.target)
        elif _exchange(self.staging, self.target):
            shutil.rmtree(self.staging, ignore_errors=True)  # now the previous generation
        else:
            aside = _work_dir(self.target, ASIDE)
            os.rename(self.target, aside)
            os.rename(self.staging, self.target)
            shutil.rmtree(aside, ignore_errors=True)
        self.committed = True

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)
            for p in self._created:  # parents this run created, while they are still empty
                try:
                    p.rmdir()
                except OSError:
                    break


__all__ = ["Generation", "check_target", "foreign_entries", "recover"]
