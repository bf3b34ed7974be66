"""Output files: checked before the work, written atomically (beside the target, then renamed).

Every output path of every command goes through here, so a place where no file can be created
(a special file system such as /proc, a path through a file, a name too long, a read-only or
vanished folder) ends in one UserError naming the path, never in a traceback, and never after
anything of the user's was replaced.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from zsearch.errors import UserError

_REASONS = {
    errno.ENOENT: "no such folder, or a special file system that holds no files",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EEXIST: "a file stands where a folder is needed",
    errno.EISDIR: "a folder stands where the file should go",
    errno.ENAMETOOLONG: "a name in it is too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the disk",
    errno.EINVAL: "a name the file system does not accept",
}
_NAME_MAX = 255  # where the OS cannot tell: the limit of every common file system


def cannot_create(target: str | os.PathLike, exc: OSError, where: str | None = None) -> UserError:
    """The one-line error for an output path where the OS refused to create a file."""
    reason = _REASONS.get(exc.errno) or exc.strerror or exc.__class__.__name__
    prefix = f"{where}: " if where else ""
    return UserError(f"{prefix}{target}: no file can be created there ({reason}); choose another path")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        return _NAME_MAX


def _deepest_existing(folder: Path) -> tuple[Path, list[str]]:
    """(the deepest part of `folder` that exists, the names below it still to be made, outermost first)."""
    missing: list[str] = []
    probe = folder
    while True:
        try:
            os.stat(probe)
            return probe, missing
        except (FileNotFoundError, NotADirectoryError):
            pass  # not there, or under a file: look one level up
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
        if probe.parent == probe:
            return probe, missing
        missing.insert(0, probe.name)
        probe = probe.parent


def check_can_create(target: str | os.PathLike, where: str | None = None, folder: bool = False) -> None:
    """Refuse, in one line, a path where no file can be created: `target` is a file to write or,
    with `folder`, a folder to write files into. Tried for real at the deepest part that exists
    (a file or folder made there and removed at once); nothing of the user's is touched."""
    target = Path(target)
    for attempt in range(PROBE_ATTEMPTS):
        try:
            return _probe(target, where, folder)
        except FileNotFoundError as exc:  # a worker started at the same moment removed its own probe:
            if attempt + 1 == PROBE_ATTEMPTS:  # look again (a special file system stays refused)
                raise cannot_create(target, exc, where) from None
            time.sleep(0.05 * (attempt + 1))


PROBE_ATTEMPTS = 5


def _probe(target: Path, where: str | None, folder: bool) -> None:
    try:
        base, missing = _deepest_existing(target if folder else target.parent)
        if not base.is_dir() and not os.path.lexists(base):  # a worker's probe folder, removed just now
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(base))
        if not base.is_dir():
            raise UserError(f"{where + ': ' if where else ''}{target}: {base} is a file (a file stands where a "
                            f"folder is needed); choose another path")
        names = missing if folder else [*missing, target.name]
        too_long = next((name for name in names if len(name) > _name_max(base)), None)
        if too_long is not None:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), too_long)
        if folder or missing:
            _try_create(base, missing[:1], as_file=False)
        else:  # the folder is there: the file itself, or (it exists) a new file beside it
            _try_create(base, [] if os.path.lexists(target) else [target.name], as_file=True)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise cannot_create(target, exc, where) from None


def _try_create(base: Path, names: list[str], as_file: bool) -> None:
    """Make `names[0]` under `base` (or a temporary file in it) and remove it again at once."""
    if not names:
        fd, tmp = tempfile.mkstemp(prefix=".zsearch-probe.", dir=base)
        os.close(fd)
        os.unlink(tmp)
        return
    first = base / names[0]
    if as_file:
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.close(fd)
        os.unlink(first)
    else:
        try:
            os.mkdir(first)
        except FileExistsError:
            if not first.is_dir():
                raise
            _try_create(first, [], as_file=True)  # another worker made it just now: try inside it
            return
        with suppress(OSError):  # another process may have put something in it meanwhile: it stays
            os.rmdir(first)


def check_working_folder() -> None:
    """Relative paths need the current folder; one deleted under the shell is a one-line error
    (checked before torch loads: its libraries fail to load from a deleted folder)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UserError("the current folder no longer exists (deleted or moved); cd to an existing folder "
                        "and run the command again") from None


def make_folder(folder: str | os.PathLike, where: str | None = None) -> Path:
    """mkdir -p, or one UserError naming the folder when the OS refuses."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_create(folder, exc, where) from None
    return folder


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    A crash or an exception leaves `target` as it was and removes the temporary file. Where the
    OS refuses the folder, the temporary file or the rename (or the folder vanished meanwhile),
    the error is one UserError naming `target`.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise cannot_create(target, exc) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode_for_new_files())  # mkstemp made it 0600 (and a writer may remake it): follow the umask
        os.replace(tmp, target)
    except OSError as exc:
        with suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        if exc.filename in (tmp, str(target)) or not target.parent.is_dir():
            raise cannot_create(target, exc) from None  # the output's own place failed, not an input
        raise
    except BaseException:
        with suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for_new_files() -> int:
    """0666 less the umask, as open() would give a new file (a LoRA another user's ComfyUI can read).

    The umask can only be read by setting it; it is set straight back. Windows knows read-only
    only, and os.chmod there honours just the write bit, which this keeps.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
