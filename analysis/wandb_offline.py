"""Read wandb offline run files (``run-<id>.wandb``) without a wandb server.

wandb >= 0.2x no longer ships a Python reader for its transaction log, so this
module parses the file directly.  Everything below was established by writing
real offline runs with wandb 0.31 and reading them back.

File format
-----------
An offline run lives in ``<dir>/wandb/offline-run-<YYYYmmdd_HHMMSS>-<id>/`` and
its data in ``run-<id>.wandb`` next to ``files/`` and ``logs/``.  (The
``wandb/latest-run`` symlink points at one of those directories; it is skipped
when searching so runs are not found twice.)

* 7-byte file header: ``b":W&B"``, magic ``0xBEE1`` (uint16 LE), version 0.
* Then a LevelDB-style log: the file (header included) is cut into 32 KiB
  blocks; a record is split into chunks that never cross a block boundary.
  Each chunk is ``crc32:uint32 LE | length:uint16 LE | type:uint8 | data``,
  type FULL=1, FIRST=2, MIDDLE=3, LAST=4.  The CRC is plain zlib CRC-32
  (IEEE, not LevelDB's masked CRC-32C) over the type byte followed by the data.
  A block tail shorter than a chunk header (7 bytes) is zero padding.
* Each reassembled record is a ``wandb_internal_pb2.Record`` protobuf.  The
  ones used here (the rest -- stats, telemetry, environment, files,
  output_raw, metric, ... -- are skipped):

  - ``run``: id, project, display_name, run_group, job_type, tags, start_time
    and the *whole* config.  It is written again in full whenever the name,
    tags or similar change after init, so the last one wins.
  - ``config``: incremental config updates (``run.config.update``).
  - ``history``: one record per committed step (``run.log``; ``commit=False``
    parts are already merged by the writer).  Items carry ``_step``,
    ``_runtime``, ``_timestamp`` and the user's keys.
  - ``summary``: incremental updates.  Each ``run.log`` also writes the logged
    values as a summary record, explicit ``run.summary[k] = v`` writes its own;
    applying them in file order gives the final summary.  wandb-core also
    writes ``{_wandb: {runtime: N}, _runtime: N}`` (N = whole seconds) records,
    so the final ``_runtime`` may be an integer.  ``define_metric(k,
    summary="max")`` makes the summary value ``{"max": v}``.
  - ``exit``: ``exit_code`` and ``runtime`` (whole seconds); proto3 omits
    zeros, so a clean exit is ``exit {}``.  No exit record = never finished.

  Keys are in ``key`` (explicit summary / config updates) or ``nested_key``
  (a path: ``run.log({"a": {"b": 1}})`` gives ``["a", "b"]``, while
  ``"test/Set5/clean/psnr"`` stays a single element).  A path is unflattened
  into nested dicts, so user keys come back exactly as logged.  Values are JSON
  text in ``value_json``, with NaN/inf written as the non-standard tokens
  ``NaN``/``Infinity``/``-Infinity`` that Python's json module accepts.  (An
  explicit ``run.summary[k] = float("nan")`` is stored as ``null`` by the
  client; that cannot be undone here.)

Killed writers: the file is written by the wandb-core service process (its
own session, so killing the job's process group may leave it running for a
moment).  It writes whole 32 KiB blocks as they fill and flushes the partial
block only now and then, so a job killed together with its service typically
leaves a file that ends on a block boundary inside a record (a tiny run may
leave just the 7-byte header); if only the client dies, the service may still
flush everything but the exit record.  Anything after the last complete record
is ignored (``truncated=True``); it is not an error.

Resumed runs: ``wandb.init(id=X, resume="allow")`` in offline mode cannot ask
the server for the previous state, so it starts a *new* directory
``offline-run-<later time>-X`` (``...-X-1``, ``-2``... if one with the same
second exists) holding an independent run: its run record has ``resume: true``
but none of the earlier config, summary, name, group or tags, and history
restarts at ``_step`` 0.  Only ``wandb sync`` would merge them server-side.
``read_runs(dedupe=True)`` therefore keeps just the latest directory per id.

Speed: framing is one Python step per chunk and parsing is protobuf's C
(upb) code; what remains is ~1 us per logged value, mostly reading protobuf
fields.  Summary values are decoded once (final values only), history values
with one ``json.loads`` per step; ``history=False`` skips the history rows.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

__all__ = ["OfflineRun", "WandbFileError", "console_log", "find_run_files", "read_media", "read_run", "read_runs",
           "system_metrics"]

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_HDR = _CHUNK_HEADER.size  # 7
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """A .wandb file is not a valid transaction log (bad header, CRC, framing)."""

    def __init__(self, path, offset: int, msg: str):
        super().__init__(f"{path}: byte offset {offset}: {msg}")
        self.path, self.offset = Path(path), offset


@dataclass
class OfflineRun:
    run_id: str
    path: Path  # the .wandb file
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    project: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # empty if read with history=False
    exit_code: int | None = None
    state: str = "unfinished"  # finished (exit 0) | failed (exit != 0) | unfinished (no exit record)
    # | corrupt (the file cannot be read: ``error`` says why; read_runs(keep_corrupt=True) only)
    start_time: float | None = None  # unix seconds
    runtime: float | None = None  # seconds
    resumed: bool = False  # run record says resume=true (see the module docstring)
    truncated: bool = False  # file ends inside a record (killed writer)
    error: str | None = None  # why a corrupt file could not be read


# --------------------------------------------------------------------------- framing


def _read_payloads(path: Path, data: bytes) -> tuple[list[bytes], bool]:
    """Split a .wandb file into record payloads.

    Returns (payloads, truncated); truncated is True when the file ends inside a
    record, which is what a killed writer leaves behind.
    """
    n = len(data)
    if n < _FILE_HEADER.size:
        raise WandbFileError(path, 0, "file shorter than the 7-byte header")
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != _IDENT or magic != _MAGIC or version != _VERSION:
        raise WandbFileError(path, 0, f"bad header {data[:7]!r}")

    unpack, crc32 = _CHUNK_HEADER.unpack_from, zlib.crc32
    payloads: list[bytes] = []
    parts: list[bytes] | None = None  # fragments of a FIRST..LAST record
    pos = _FILE_HEADER.size  # blocks are counted from the start of the file
    while True:
        left = _BLOCK - pos % _BLOCK
        if left < _HDR:  # zero padding at the end of a block
            pos += left
            continue
        if pos + _HDR > n:  # clean EOF, or a chunk header cut short
            return payloads, pos < n or parts is not None
        crc, length, ctype = unpack(data, pos)
        if length > left - _HDR:  # a writer never lets a chunk cross blocks
            raise WandbFileError(path, pos, f"chunk length {length} crosses a block boundary")
        end = pos + _HDR + length
        if end > n:  # chunk cut short: the writer was killed mid-write
            return payloads, True
        chunk = data[pos + 6 : end]  # type byte + data: what the CRC covers
        if crc32(chunk) != crc:
            if len(data.rstrip(b"\0")) < end:  # only zeros from inside this chunk on:
                return payloads, True  # a zero-filled tail, as a crash can leave
            raise WandbFileError(path, pos, "chunk CRC mismatch")
        if ctype == _FULL and parts is None:
            payloads.append(chunk[1:])
        elif ctype == _FIRST and parts is None:
            parts = [chunk[1:]]
        elif ctype in (_MIDDLE, _LAST) and parts is not None:
            parts.append(chunk[1:])
            if ctype == _LAST:
                payloads.append(b"".join(parts))
                parts = None
        else:
            raise WandbFileError(path, pos, f"unexpected chunk type {ctype}")
        pos = end


# --------------------------------------------------------------------------- values


def _loads(text: str):
    try:
        return json.loads(text)  # accepts NaN, Infinity, -Infinity
    except ValueError:
        try:  # other spellings of non-finite floats (nan, inf, -inf, ...)
            return float(text)
        except ValueError:
            return text


def _loads_many(texts: list[str]) -> list:
    """Decode many JSON texts; one json.loads call is much faster than one per value."""
    try:
        values = json.loads("[" + ",".join(texts) + "]")
        if len(values) == len(texts):  # a text with a top-level comma would shift
            return values
    except ValueError:
        pass
    return [_loads(t) for t in texts]


def _put(d: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        sub = d.get(k)
        if not isinstance(sub, dict):
            sub = d[k] = {}
        d = sub
    d[path[-1]] = value


def _drop(d: dict, path: tuple[str, ...]) -> None:
    for k in path[:-1]:
        d = d.get(k)
        if not isinstance(d, dict):
            return
    d.pop(path[-1], None)


_REMOVED = object()


def _collect(raw: dict, rec) -> None:
    """Note a ConfigRecord/SummaryRecord's updates as {key path: JSON text}.

    Values are decoded only once, for the final state (_build): a summary gets
    an update per logged step, and decoding them all would dominate.  A path
    that is written again moves to the end, so _build replays the writes in
    their true order, which matters when a path and its parent both are set.
    """
    for it in rec.update:
        nk = it.nested_key
        p = tuple(nk) if nk else (it.key,)
        raw.pop(p, None)
        raw[p] = it.value_json
    for it in rec.remove:
        nk = it.nested_key
        p = tuple(nk) if nk else (it.key,)
        raw.pop(p, None)
        raw[p] = _REMOVED


def _build(raw: dict) -> dict:
    values = iter(_loads_many([v for v in raw.values() if v is not _REMOVED]))
    out: dict = {}
    for p, v in raw.items():
        if v is _REMOVED:
            _drop(out, p)
        elif len(p) == 1:
            out[p[0]] = next(values)
        else:
            _put(out, p, next(values))
    out.pop("_wandb", None)  # wandb's own bookkeeping (versions, telemetry, runtime)
    return out


def _typed_value(item):
    """A HistoryItem's typed value (none/boolean/integer/number/text/json), used
    when value_json is empty; wandb 0.31 writes only value_json."""
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    return json.loads(item.json) if kind == "json" else getattr(item, kind)


def _history_row(rec) -> dict:
    items = rec.item
    texts = [it.value_json for it in items]
    if all(texts):
        values = _loads_many(texts)
    else:
        values = [_loads(t) if t else _typed_value(it) for it, t in zip(items, texts)]
    row: dict = {}
    for it, v in zip(items, values):
        nk = it.nested_key
        if len(nk) == 1:
            row[nk[0]] = v
        else:
            _put(row, tuple(nk) or (it.key,), v)
    return row


# --------------------------------------------------------------------------- public API


def _resolve(path) -> Path:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if len(files) != 1:
            raise FileNotFoundError(f"expected one run-*.wandb in {path}, found {len(files)}")
        return files[0]
    return path


def read_run(path, history: bool = True) -> OfflineRun:
    """Parse one run: ``path`` is a ``.wandb`` file or the run directory holding it.

    ``history=False`` skips decoding the per-step rows (``run.history`` stays
    empty), roughly halving the time for long runs when only the summary is needed.
    """
    path = _resolve(path)
    payloads, truncated = _read_payloads(path, path.read_bytes())
    run = OfflineRun(run_id=path.stem.removeprefix("run-"), path=path, truncated=truncated)
    config_raw: dict = {}
    summary_raw: dict = {}
    rows = []
    parse = pb.Record.FromString
    for payload in payloads:
        rec = parse(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            _collect(summary_raw, rec.summary)
        elif kind == "history":
            if history:
                rows.append(_history_row(rec.history))
        elif kind == "config":
            _collect(config_raw, rec.config)
        elif kind == "run":
            r = rec.run
            run.run_id = r.run_id or run.run_id
            run.project = r.project or run.project
            run.name = r.display_name or run.name
            run.group = r.run_group or run.group
            run.job_type = r.job_type or run.job_type
            run.tags = list(r.tags)  # each run record is a full snapshot
            run.resumed = run.resumed or r.resume
            if r.HasField("start_time") and run.start_time is None:
                run.start_time = r.start_time.seconds + r.start_time.nanos / 1e9
            _collect(config_raw, r.config)
            _collect(summary_raw, r.summary)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
            run.runtime = float(rec.exit.runtime)
    run.config, run.summary, run.history = _build(config_raw), _build(summary_raw), rows

    if run.exit_code is None:
        run.state = "unfinished"
    else:
        run.state = "finished" if run.exit_code == 0 else "failed"
    # exit.runtime and the runtime-only summary updates are whole seconds; the
    # last logged _runtime is exact but stops at the last log call: take the max.
    candidates = [run.runtime, run.summary.get("_runtime"), rows[-1].get("_runtime") if rows else None]
    candidates = [float(c) for c in candidates if isinstance(c, (int, float))]
    run.runtime = max(candidates) if candidates else None
    return run


def find_run_files(root) -> list[Path]:
    """Every ``run-*.wandb`` under ``root`` (recursive, symlinks not followed), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    found = []
    for dirpath, _dirs, files in os.walk(root):  # os.walk skips symlinked dirs (latest-run)
        found += [Path(dirpath, f) for f in files if f.startswith("run-") and f.endswith(".wandb")]
    return sorted(found)


def read_runs(root, dedupe: bool = True, history: bool = True, skip_corrupt: bool = False,
              keep_corrupt: bool = False) -> list[OfflineRun]:
    """Parse every run under ``root``, ordered by start time.

    With ``skip_corrupt``, a corrupt file is reported with a warning and left out
    instead of aborting the whole read; with ``keep_corrupt`` it is reported and becomes a
    run of state ``corrupt`` (its id from the file name, ``error`` saying why), so that its
    job still shows, unless another file of the same run id reads fine.

    With ``dedupe``, keep one run per run id: the latest start_time, then the
    latest directory (``offline-run-<timestamp>-<id>[-<n>]``, see _recency).  A
    resumed/requeued offline job is a separate, independent directory (see the
    module docstring), so the latest one is the job's final state; summary and
    config keys of earlier directories that the latest did not rewrite are kept
    (see _merge), as a wandb server keeps them across a resume.
    """
    runs = []
    for path in find_run_files(root):
        try:
            runs.append(read_run(path, history=history))
        except WandbFileError as e:
            if not (skip_corrupt or keep_corrupt):
                raise
            warnings.warn(f"{'corrupt' if keep_corrupt else 'skipping corrupt'} wandb run file: {e}", stacklevel=2)
            if keep_corrupt:
                runs.append(OfflineRun(run_id=path.stem.removeprefix("run-"), path=path, state="corrupt",
                                       error=str(e)))
    if dedupe:
        by_id: dict[str, list[OfflineRun]] = {}
        for r in runs:
            by_id.setdefault(r.run_id, []).append(r)
        runs = [_merge(sorted([r for r in group if r.state != "corrupt"] or group[-1:], key=_recency))
                for group in by_id.values()]
    # a run with no start record (killed before wandb wrote one) goes last
    return sorted(runs, key=lambda r: (r.start_time or float("inf"), str(r.path)))


def _merge(attempts: list[OfflineRun]) -> OfflineRun:
    """One run from the folders a run id left (oldest first): the latest folder's state,
    history and identity, with the summary and config keys of earlier folders kept unless a
    later one rewrote them -- what a wandb server shows after a resume (a requeued job, or
    results logged to a finished run afterwards, e.g. by python -m analysis.interpret)."""
    latest = attempts[-1]
    if len(attempts) == 1:
        return latest
    summary, config = {}, {}
    for a in attempts:
        summary.update(a.summary)
        config.update(a.config)
    return replace(
        latest, summary=summary, config=config, name=latest.name or attempts[0].name,
        group=latest.group or attempts[0].group, tags=latest.tags or attempts[0].tags,
        job_type=latest.job_type or attempts[0].job_type)


def _recency(run: OfflineRun) -> tuple:
    # Directory: offline-run-<YYYYmmdd_HHMMSS>-<id>, plus "-<n>" when a run with
    # the same id already started in the same second (the suffix counts up).
    name = run.path.parent.name
    m = re.fullmatch(r"(.*?\d{8}_\d{6})-" + re.escape(run.run_id) + r"(?:-(\d+))?", name)
    stamp, n = (m[1], int(m[2] or 0)) if m else (name, 0)
    return (run.start_time or 0.0, stamp, n)


# --------------------------------------------------------------------------- media, system metrics, console


def _records(path, kinds: tuple[str, ...]):
    """(kind, record) of the given record types, in file order."""
    path = _resolve(path)
    payloads, _ = _read_payloads(path, path.read_bytes())
    parse = pb.Record.FromString
    for payload in payloads:
        rec = parse(payload)
        kind = rec.WhichOneof("record_type")
        if kind in kinds:
            yield kind, getattr(rec, kind)


def read_media(path) -> list[dict]:
    """The media a run logged (images, tables, ...: values with a ``_type`` such as
    ``image-file`` or ``table-file``), one entry per key and step in log order:
    ``{"key", "step", "type", "path", "file", ...}`` plus the value's own fields (``caption``,
    ``width``, ``height``, ``format``, ``sha256``...). ``path`` is as logged (relative to the
    run's ``files/``), ``file`` the file on disk (which may be missing if the run was copied
    without it). ``path`` is a ``.wandb`` file or the run directory holding it."""
    path = _resolve(path)
    files = path.parent / "files"
    out = []
    for _, rec in _records(path, ("history",)):
        row = _history_row(rec)
        step = row.get("_step", rec.step.num if rec.HasField("step") else None)
        for key, value in row.items():
            if isinstance(value, dict) and isinstance(value.get("_type"), str):
                entry = {"key": key, "step": step, "type": value["_type"], **{k: v for k, v in value.items()
                                                                              if k != "_type"}}
                if isinstance(value.get("path"), str):
                    entry["file"] = files / value["path"]
                out.append(entry)
    return out


def system_metrics(path) -> list[dict]:
    """wandb's system metrics samples (its ``_stats``: ``cpu``, ``memory_percent``,
    ``proc.memory.rssMB``, ``disk.*``, ``network.*``, ``gpu.*``...), one dict per sample in file
    order, with ``_timestamp`` (unix seconds)."""
    out = []
    for _, rec in _records(path, ("stats",)):
        sample = {"_timestamp": rec.timestamp.seconds + rec.timestamp.nanos / 1e9}
        for it in rec.item:
            sample[it.key] = _loads(it.value_json)
        out.append(sample)
    return out


def console_log(path) -> str:
    """The run's captured console output: ``files/output.log`` (wandb's rendering, carriage
    returns applied) when it exists, else the raw ``output_raw`` records joined (carriage
    returns kept); empty when the console was not captured."""
    path = _resolve(path)
    log_file = path.parent / "files" / "output.log"
    if log_file.is_file():
        return log_file.read_text(errors="replace")
    return "".join(rec.line for _, rec in _records(path, ("output_raw", "output")))
