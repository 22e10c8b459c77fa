"""Crash-safe result files and run metadata.

Every result, checkpoint and config that miniattn writes goes through this module so that an
interrupted run never leaves a half-written file behind:

* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json` and
  :func:`atomic_save_npz` write to a temporary file *in the destination directory*, flush and
  ``fsync`` it, then ``os.replace`` it over the destination. ``os.replace`` is atomic on POSIX and
  Windows when source and destination are on the same file system (hence the same directory), so a
  reader sees either the old file or the new one, never a mixture.
* :func:`append_jsonl` appends one JSON record per line, flushed and fsynced; :func:`read_jsonl`
  reads such a log and skips a truncated last line (the trace of a crash in the middle of a write).
* :func:`run_metadata` records what is needed to reproduce a run: the config, the seed, the package
  versions, the platform, the git revision of the code (when available) and a UTC timestamp.
* :func:`to_jsonable` converts NumPy scalars and arrays (and tuples, paths, seed sequences) to plain
  JSON values.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_json(d / "config.json", {"lr": np.float64(1e-3), "dims": np.arange(3)})
>>> append_jsonl(d / "metrics.jsonl", {"step": np.int64(0), "loss": 4.1})
>>> read_jsonl(d / "metrics.jsonl")
[{'step': 0, 'loss': 4.1}]
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import tokenize
import zipfile
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "to_jsonable", "dumps_json", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
    "atomic_save_npz", "load_npz", "append_jsonl", "read_jsonl", "read_json", "git_info",
    "package_versions", "environment_info", "run_metadata",
]

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------
# JSON encoding
# --------------------------------------------------------------------------------------------------

def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` as plain JSON data (dict, list, str, int, float, bool, None).

    Conversions: NumPy integer/float/bool scalars -> Python scalars; arrays -> nested lists;
    tuples and sets -> lists (sets sorted); paths -> strings; ``numpy.random.SeedSequence`` ->
    ``{"entropy": ..., "spawn_key": [...]}``; mapping keys -> strings. Non-finite floats (NaN, ±inf)
    become ``None``: strict JSON has no representation for them, and ``None`` is what a reader
    should treat as "no value" (e.g. an attention accuracy where there is no alignment).

    Raises
    ------
    TypeError
        For any other object (naming its type), rather than writing its ``repr`` silently.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufU":
            raise TypeError(f"cannot encode an array of dtype {obj.dtype} as JSON")
        return [to_jsonable(x) for x in obj.tolist()] if obj.ndim else to_jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(x) for x in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.random.SeedSequence):
        return {"entropy": to_jsonable(obj.entropy), "spawn_key": list(obj.spawn_key)}
    raise TypeError(f"cannot encode an object of type {type(obj).__name__} as JSON")


def dumps_json(obj: Any, *, indent: int | None = None) -> str:
    """``json.dumps`` of :func:`to_jsonable` (obj): strict (NaN-free) JSON, keys in insertion order."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

def _fsync_directory(directory: Path) -> None:
    # Make the rename itself durable. Not possible on every platform (Windows cannot open a
    # directory), and failing here must not fail a write that has already succeeded.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask_file_mode() -> int:
    # mkstemp creates its files with mode 0600; a result should get the mode that a plain open()
    # would give it. Read once: os.umask can only be read by setting it, which is process-wide.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_file_mode()


def _atomic_write(path: PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it, rename it to ``path``."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"path must be a file path, got the directory {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the destination, so that os.replace never crosses a file system.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        # Includes KeyboardInterrupt: never leave the temporary file behind.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, flush, fsync, ``os.replace``).

    Missing parent directories are created. On any error, including ``KeyboardInterrupt``, the
    destination keeps its previous content (or stays absent) and no temporary file remains.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write the string ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (via :func:`to_jsonable`, indented, trailing newline) atomically."""
    atomic_write_text(path, dumps_json(obj, indent=indent) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save_npz(path: PathLike, **arrays) -> None:
    """Save arrays to an uncompressed ``.npz`` archive at ``path`` atomically.

    Unlike ``numpy.savez`` the path is used exactly as given (no ``.npz`` is appended). Object
    arrays are refused, because loading them would need pickle (:func:`load_npz` disables it):
    store structured data as a JSON string, ``np.array(dumps_json(obj))``.

    Parameters
    ----------
    path : str or path
    **arrays : array_like
        Saved under their keyword names (``"/"`` is allowed in a name, e.g. ``"params/W"``).
    """
    if not arrays:
        raise ValueError("atomic_save_npz needs at least one array")
    converted = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "O":
            raise TypeError(f"array {name!r} has dtype object; store it as a JSON string instead")
        converted[name] = arr
    _atomic_write(path, lambda f: np.savez(f, **converted))


def _one_line(exc: BaseException) -> str:
    """``type: message`` of ``exc`` on one line (numpy's messages can span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _check_npy_member(path: PathLike, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Parse the ``.npy`` header of one archive member and check it against the member's size.

    numpy allocates the array its header declares before reading any data, so a 100-byte member
    claiming shape ``(10**12,)`` would ask for 8 TB. The declared ``shape × itemsize`` must fit in
    the bytes the member actually holds after its header (its uncompressed size, which zipfile
    never reads past). Members that are not ``.npy`` data are left to ``numpy.load``.

    Raises
    ------
    ValueError
        Naming the file and the member, for a header that does not parse or declares more data
        than the member holds.
    """
    fmt = np.lib.format
    where = f"{os.fspath(path)}: member {info.filename!r}"
    with archive.open(info) as fp:
        if fp.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
            return
        fp.seek(0)
        try:
            version = fmt.read_magic(fp)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unknown .npy format version {version}")
            # Version 3.0 differs from 2.0 only in encoding field names as UTF-8 instead of
            # latin-1, which changes neither the shape nor the item size checked here.
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = reader(fp)
        except (ValueError, SyntaxError, EOFError, tokenize.TokenError) as exc:
            # numpy's header parser lets tokenize/ast errors escape for a mangled header.
            raise ValueError(f"{where} has a broken .npy header ({_one_line(exc)})") from None
        available = info.file_size - fp.tell()
    if any(n < 0 for n in shape):
        raise ValueError(f"{where} declares the negative shape {shape}")
    if dtype.hasobject:
        return  # refused by numpy.load (pickle disabled) before it allocates anything
    # Python ints: a crafted shape must not overflow into a small product.
    declared = math.prod(int(n) for n in shape) * dtype.itemsize
    if declared > available:
        raise ValueError(f"{where} declares {dtype}{list(shape)} ({declared} bytes) but holds only "
                         f"{max(available, 0)} bytes of data")


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` archive into a dict (pickle disabled, file closed on return).

    Every member's ``.npy`` header is checked before any array is read (see
    :func:`_check_npy_member`), so a crafted header cannot make numpy allocate more memory than the
    archive holds.

    Raises
    ------
    ValueError
        Naming the file (and member) for a broken header, a header declaring more data than its
        member holds, or an object array; other damage raises what ``numpy.load`` and ``zipfile``
        raise (``zipfile.BadZipFile``, ``EOFError``, ``OSError``).
    """
    with np.load(path, allow_pickle=False) as data:
        for info in data.zip.infolist():
            _check_npy_member(path, data.zip, info)
        return {name: data[name] for name in data.files}


# --------------------------------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------------------------------

def _drop_partial_last_line(path: Path) -> None:
    """If ``path`` ends without a newline, finish or remove that last line before appending.

    A crash during :func:`append_jsonl` can leave a partial record at the end of the file; appending
    after it would glue the next record onto it and corrupt both. A last line that still parses as
    JSON (e.g. written by hand without a newline) is kept and terminated; a partial one is dropped.
    """
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        start = content.rfind(b"\n") + 1
        try:
            json.loads(content[start:].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            f.truncate(start)
        else:
            f.write(b"\n")


def append_jsonl(path: PathLike, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one line of JSON to ``path`` (created if missing), flushed and fsynced.

    The line is written with a single ``write`` call, so a crash leaves at most one partial last
    line, which :func:`read_jsonl` skips and the next :func:`append_jsonl` removes.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a mapping, got {type(record).__name__}")
    path = Path(path)
    line = (dumps_json(record) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _drop_partial_last_line(path)
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: PathLike) -> list[dict]:
    """Read the records of a JSON-lines file; a truncated (unterminated, unparsable) last line is skipped.

    Raises
    ------
    ValueError
        If a line other than an unterminated last line is not valid JSON (naming the line number):
        that is corruption, not an interrupted append, and must not be hidden.
    """
    with open(path, "rb") as f:
        content = f.read()
    lines = content.split(b"\n")
    # After split, a file ending in "\n" has an empty final element; otherwise the final element is
    # an unterminated line that may be the remains of an interrupted write.
    unterminated = lines.pop()
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            records.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{os.fspath(path)}: line {number} is not valid JSON ({err})") from None
    if unterminated.strip():
        try:
            records.append(json.loads(unterminated.decode("utf-8")))
        except (UnicodeDecodeError, ValueError):
            pass  # a partial record from an interrupted append
    return records


# --------------------------------------------------------------------------------------------------
# Run metadata
# --------------------------------------------------------------------------------------------------

#: Paths (from the repository top) of generated files that are committed but are not code.
GENERATED_OUTPUTS = ("results", "REPORT.md")


def git_info(path: PathLike | None = None) -> dict | None:
    """Git revision and dirty flag of the work tree containing ``path``, or None if unavailable.

    ``path`` defaults to the directory of this package, so the revision describes the code that ran,
    not the current working directory. Returns ``{"revision": sha, "dirty": bool}``; ``dirty`` counts
    modified tracked files only, and not the generated outputs the repository keeps (``results/``
    and ``REPORT.md`` at its top): writing results is not a change to the code. Never raises: no
    git executable, not a repository, or a slow git all give None.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    if not cwd.is_dir():
        cwd = cwd.parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                 ":(top)", *(f":(top,exclude){p}" for p in GENERATED_OUTPUTS)],
                                cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if not revision:
        return None
    return {"revision": revision, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    """Versions of Python, miniattn and its run-time dependencies (None for one not installed).

    Read from the installed package metadata, so matplotlib is not imported just to ask.
    """
    versions: dict[str, str | None] = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("scipy", "matplotlib", "miniattn"):
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_info() -> dict[str, Any]:
    """Versions, platform and git state of the running environment (what ``miniattn info`` prints)."""
    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python_executable": sys.executable,
        "git": git_info(),
    }


def run_metadata(config: Mapping[str, Any], seed: Any) -> dict[str, Any]:
    """Everything needed to reproduce a run, as JSON-ready data.

    Parameters
    ----------
    config : mapping
        The run's configuration (model, task, optimiser, training settings); NumPy values allowed.
    seed : int or numpy.random.SeedSequence
        The root seed of the run.

    Returns
    -------
    dict with keys ``config``, ``seed``, ``versions`` (python, numpy, scipy, matplotlib, miniattn),
    ``platform``, ``machine``, ``git`` (``{"revision", "dirty"}`` or None outside a git work tree)
    and ``timestamp_utc`` (ISO 8601).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        raise TypeError(f"seed must be an int or a numpy.random.SeedSequence, got {type(seed).__name__}")
    env = environment_info()
    return {
        "config": to_jsonable(config),
        "seed": to_jsonable(seed),
        "versions": env["versions"],
        "platform": env["platform"],
        "machine": env["machine"],
        "git": env["git"],
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
