"""The result store: one experiment's run files, keyed by their config and by the code that made them.

Layout under the results root (``$MINIATTN_RESULTS`` or ``./results``)::

    <exp>/runs/<name>.json   one run: config, its hash, code fingerprint, metadata, scalar results,
                             and the SHA-256 of its arrays file
    <exp>/runs/<name>.npz    the same run's arrays (learning curves, trajectories), if any
    <exp>/summary.json       the claims, tables and notes the figures and REPORT.md are built from

A stored run is reused only when it is *current*: its JSON parses, its config hash equals the
requested config's, its code fingerprint (:mod:`analysis.fingerprint`) equals the fingerprint of the
experiment's code now, its recorded config still hashes to its recorded hash, its ``data`` and
``arrays`` list match their recorded ``data_sha256``, and its ``.npz`` exists with the recorded
checksum and holds exactly the members listed in ``arrays``. Anything else — a truncated, corrupt or
edited file, a file from older code, a record written before ``data_sha256`` existed — is
recomputed, never fatal, never silently reused. Files are written atomically (:mod:`miniattn.io`); the ``.npz`` before the ``.json``, so a
current ``.json`` implies a complete run.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from miniattn import io
from miniattn.checkpoint import remove_stale_temporaries

__all__ = ["results_root", "canonical_json", "config_hash", "data_hash", "ResultStore", "StoredRun",
           "MissingDataError"]


def results_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$MINIATTN_RESULTS``, else ``./results``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("MINIATTN_RESULTS", "results"))


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) of ``obj``: the hashed form."""
    try:
        plain = io.to_jsonable(obj)
    except TypeError as exc:
        raise TypeError(f"cannot store this value in a result file: {exc}") from None
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``config`` (key order does not matter)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def data_hash(data: Mapping[str, Any], arrays: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of a record's ``data`` and ``arrays`` list.

    Parameters
    ----------
    data : mapping
        The record's scalar results, as stored in its JSON (or as passed to :meth:`ResultStore.save_run`:
        both give the same digest, since :func:`canonical_json` converts the values first).
    arrays : list of str
        The names of the arrays in the record's ``.npz``.

    Returns
    -------
    str
        The digest recorded as ``data_sha256``.
    """
    return hashlib.sha256(canonical_json({"arrays": arrays, "data": data}).encode()).hexdigest()


class MissingDataError(KeyError):
    """A figure or claim asked a stored run for a result it does not hold (the message names the file)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _RunData(dict):
    """A run's ``data``: a missing key is a :class:`MissingDataError` naming the run file."""

    def __init__(self, values: Mapping[str, Any], path: Path):
        super().__init__(values)
        self._path = path

    def __missing__(self, key):
        raise MissingDataError(f"{self._path}: the stored run has no result {key!r} (written by other code, or "
                               "edited); rerun the compute step")

    def __reduce__(self):
        return (_RunData, (dict(self), self._path))


def _open_regular(path: Path, mode: str = "rb", **kwargs):
    """``open(path, mode)`` for a regular file (symbolic links followed); OSError for anything else.

    Opened non-blocking first and checked with ``fstat`` on the open descriptor, so a FIFO (or a
    device) in place of a result file is refused at once instead of blocking the reader forever.
    """
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblocking)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def _file_sha256(path: Path) -> str:
    with _open_regular(path, "rb") as f:
        return _stream_sha256(f)


def _stream_sha256(f) -> str:
    """SHA-256 hex digest of the rest of the open binary file ``f``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _split_arrays(result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """NumPy arrays (ndim > 0) go to the ``.npz``; everything else to the JSON."""
    data, arrays = {}, {}
    for k, v in result.items():
        (arrays if isinstance(v, np.ndarray) and v.ndim > 0 else data)[k] = v
    return data, arrays


class StoredRun(dict):
    """A run record as read back: ``name``, ``config``, ``data`` (scalars and arrays merged), metadata."""

    @property
    def name(self) -> str:
        return self["name"]

    @property
    def config(self) -> dict:
        return self["config"]

    @property
    def data(self) -> dict:
        return self["data"]


class ResultStore:
    """Result files of one experiment under ``<root>/<experiment>/``."""

    def __init__(self, experiment: str, root: str | os.PathLike | None = None):
        if not isinstance(experiment, str) or not experiment or "/" in experiment or experiment.startswith("."):
            raise ValueError(f"experiment must be a non-empty name without '/', got {experiment!r}")
        self.experiment = experiment
        self.dir = results_root(root) / experiment
        self.runs_dir = self.dir / "runs"
        self.summary_path = self.dir / "summary.json"

    def run_path(self, name: str) -> Path:
        """The JSON path of run ``name`` (its arrays are beside it with suffix ``.npz``)."""
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"run name must be a non-empty file name without '/', got {name!r}")
        return self.runs_dir / f"{name}.json"

    def _read_meta(self, name: str) -> dict | None:
        """The parsed run JSON, or None when it is missing, unreadable, or not a run record.

        A record must be a JSON object whose ``data`` entry is an object: :meth:`load_run` merges the
        arrays into it, and a record without it cannot be a complete run written by :meth:`save_run`.
        """
        try:
            with _open_regular(self.run_path(name), "r", encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("data"), dict):
            return None
        arrays = meta.get("arrays")
        if (not isinstance(arrays, list) or not all(isinstance(a, str) for a in arrays)
                or arrays != sorted(set(arrays)) or set(arrays) & set(meta["data"])):
            return None
        return meta

    @staticmethod
    def _intact_record(meta: Mapping[str, Any]) -> bool:
        """Whether the record's config and data still match the hashes recorded with them."""
        try:
            return (isinstance(meta.get("config"), dict) and config_hash(meta["config"]) == meta.get("config_hash")
                    and data_hash(meta["data"], meta["arrays"]) == meta.get("data_sha256"))
        except (TypeError, ValueError, RecursionError):
            return False

    @staticmethod
    def _config_intact(meta: Mapping[str, Any]) -> bool:
        try:
            return isinstance(meta.get("config"), dict) and config_hash(meta["config"]) == meta["config_hash"]
        except (TypeError, ValueError, RecursionError):
            return False

    @staticmethod
    def _members(z) -> list[str]:
        return sorted(z.files)

    def is_current(self, name: str, config: Mapping[str, Any], code: str) -> bool:
        """Whether run ``name`` is complete, intact, and was computed with ``config`` by code ``code``.

        Parameters
        ----------
        name : str
            The run's name.
        config : mapping
            The requested configuration; compared through :func:`config_hash`.
        code : str
            The fingerprint of the experiment's code now.

        Returns
        -------
        bool
            False for a missing or malformed JSON (no ``data`` object included), another config or
            code, a recorded config that no longer hashes to the recorded ``config_hash``, a ``data``
            or ``arrays`` list that does not match the recorded ``data_sha256`` (or a record without
            one, written before it existed), or an ``.npz`` that is missing, differs from the
            recorded SHA-256, or does not hold exactly the arrays the record lists.
        """
        meta = self._read_meta(name)
        if meta is None or meta.get("config_hash") != config_hash(config) or meta.get("code") != code:
            return False
        if not self._intact_record(meta):
            return False
        if not meta["arrays"]:
            return "arrays_sha256" not in meta
        npz = self.run_path(name).with_suffix(".npz")
        try:
            with _open_regular(npz, "rb") as f:
                if _stream_sha256(f) != meta.get("arrays_sha256"):
                    return False
                f.seek(0)
                with np.load(f, allow_pickle=False) as z:
                    return self._members(z) == meta["arrays"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
            return False

    def save_run(self, name: str, config: Mapping[str, Any], code: str, result: Mapping[str, Any], *,
                 metadata: Mapping[str, Any]) -> Path:
        """Write run ``name``: arrays to ``.npz`` first, then the JSON with the arrays' checksum.

        The JSON records ``config_hash`` (of ``config``), ``data_sha256`` (of the scalar results and the
        list of array names, :func:`data_hash`) and ``arrays_sha256`` (of the ``.npz``, when there are
        arrays), which :meth:`is_current` and :meth:`load_run` verify.

        Everything is checked, and the JSON record encoded once, before any file is touched: a result
        that cannot be stored (a TypeError or ValueError from the encoding) leaves the previous run,
        if any, intact and current.
        """
        path = self.run_path(name)
        for arg, value in (("config", config), ("result", result), ("metadata", metadata)):
            if not isinstance(value, Mapping):
                raise TypeError(f"{arg} must be a mapping, got {type(value).__name__} (saving run {name!r})")
        data, arrays = _split_arrays(result)
        record = {"experiment": self.experiment, "name": name, "config": dict(config),
                  "config_hash": config_hash(config), "code": code, "seed": config.get("seed"),
                  **dict(metadata), "data": data, "arrays": sorted(arrays),
                  "data_sha256": data_hash(data, sorted(arrays))}
        # The record as written below, less the arrays' checksum (a hex string, always encodable).
        json.dumps(io.to_jsonable(record), indent=1, sort_keys=True, allow_nan=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        if arrays:
            io.atomic_save_npz(path.with_suffix(".npz"), **arrays)
            record["arrays_sha256"] = _file_sha256(path.with_suffix(".npz"))
        io.atomic_write_text(path, json.dumps(io.to_jsonable(record), indent=1, sort_keys=True,
                                              allow_nan=False) + "\n")
        return path

    def load_run(self, name: str) -> StoredRun:
        """The stored record of run ``name`` with its arrays merged into ``record["data"]``.

        Raises
        ------
        ValueError
            Naming the file, when it is missing, truncated or corrupt: a JSON that is not a record
            with a ``data`` object and an ``arrays`` list, a config or ``data`` that no longer matches
            its recorded hash, or an ``.npz`` that does not match its recorded SHA-256 or does not hold
            exactly the listed arrays.

        Notes
        -----
        The returned record's ``data`` raises :class:`MissingDataError` (a KeyError naming the run
        file) for a key it does not hold.
        """
        path = self.run_path(name)
        meta = self._read_meta(name)
        if meta is None:
            raise ValueError(f"{path}: missing, not valid JSON, or not a run record with a 'data' object; "
                             "rerun the experiment's compute step")
        # A record written before data_sha256 existed is read as it is (compute recomputes it: it is
        # not current); one that has it must match it, and its recorded config its recorded hash.
        if ("data_sha256" in meta and not self._intact_record(meta)) or (
                "config_hash" in meta and not self._config_intact(meta)):
            raise ValueError(f"{path}: its config or data does not match the hashes recorded with them "
                             "(edited or damaged); rerun the compute step")
        if not meta["arrays"] and "arrays_sha256" in meta:
            raise ValueError(f"{path}: lists no arrays but records an arrays checksum (edited or damaged); "
                             "rerun the compute step")
        if meta["arrays"]:
            npz = path.with_suffix(".npz")
            try:
                # One open file for the checksum and the load: the bytes verified are the bytes read,
                # even if a writer replaces the .npz in between.
                with _open_regular(npz, "rb") as f:
                    intact = _stream_sha256(f) == meta.get("arrays_sha256")
                    if intact:
                        f.seek(0)
                        with np.load(f, allow_pickle=False) as z:
                            members = self._members(z)
                            arrays = {k: z[k] for k in members} if members == meta["arrays"] else None
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
                raise ValueError(f"{npz}: unreadable ({exc}); rerun the compute step") from None
            if not intact:
                raise ValueError(f"{npz}: does not match the SHA-256 recorded in {path.name} "
                                 "(replaced or damaged); rerun the compute step")
            if arrays is None:
                raise ValueError(f"{npz}: its arrays {members} are not the ones {path.name} lists "
                                 f"{meta['arrays']}; rerun the compute step")
            meta["data"].update(arrays)
        meta["data"] = _RunData(meta["data"], path)
        return StoredRun(meta)

    def clean_temps(self) -> None:
        """Remove the temporary files and directories (``.*.tmp``) left by an interrupted writer."""
        for d in (self.dir, self.runs_dir):
            if d.is_dir():
                remove_stale_temporaries(d)

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        io.atomic_write_text(self.summary_path, json.dumps(io.to_jsonable(summary), indent=1, sort_keys=True,
                                                           allow_nan=False) + "\n")
        return self.summary_path

    def load_summary(self) -> dict[str, Any]:
        """``summary.json`` (ValueError naming the file when it is missing or corrupt)."""
        try:
            with _open_regular(self.summary_path, "r", encoding="utf-8") as f:
                summary = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{self.summary_path}: not computed yet (make repro-{self.experiment})") from None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: deeply nested
            raise ValueError(f"{self.summary_path}: corrupt ({exc}); rerun the compute step") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{self.summary_path}: not a summary object")
        return summary
