"""Fold dead processes' metric files into archive files, so scrape cost stays flat.

prometheus_client's multiprocess mode writes one file per metric type per pid and sums counters
and histograms over every file it finds, live or dead. Workers recycled by max-tasks-per-child
(or SIGKILLed) leave their files behind, and the scrape reads them all (~0.12 ms each) forever.
Deleting them would make counters go backwards. Instead, each dead pid's counter, histogram
and summary values are added into `counter_archive.db` / `histogram_archive.db` /
`summary_archive.db`, written with prometheus_client's own MmapedDict so MultiProcessCollector
reads them like any other file (it takes the type from the name and ignores the pid part).
Gauges follow their mode: live* files of dead pids are deleted (what mark_process_dead does);
min/max/sum/mostrecent are merged with that same aggregation into `gauge_<mode>_archive.db`;
"all" files are left alone (the pid label is their data; definitions.py uses no "all" gauge).

Liveness, and why pid reuse cannot lose or double-count anything
-----------------------------------------------------------------
A pid is dead when /proc/<pid> does not exist AND its lock file `pid_<pid>.lock` can be flocked.
Every metrics-writing process of ours holds that lock for its whole life (multiproc.
register_process, taken before its first metric file is opened; forked children take theirs in
an at-fork hook before any of their code runs). The compactor holds the dead pid's lock while it
renames the pid's files away (`counter_<pid>.db` -> `counter_<pid>.db.stage`; rename is atomic)
and unlinks the lock file, then releases it. So a new process that gets the same pid number
either (a) locked first, and the compactor sees it alive and leaves the files alone (the new
process continues from the old values, exactly as plain prometheus_client does: nothing lost,
nothing counted twice), or (b) blocks on the lock until the old files are already staged, and
then creates fresh files starting at zero while the old values live on in the archive. /proc is
checked before and again after taking the lock, which also covers processes that never take the
lock (plain prometheus_client users) except in the microseconds between the two checks.
Assumption: the exporter shares the pid namespace with the workers (same container, or a pod
with shareProcessNamespace: true); otherwise /proc says nothing and only the lock protects.

Crash safety: stage files are invisible to MultiProcessCollector (not *.db). A merge writes
`<archive>.new`, then commits by atomically writing `<archive>.journal` (the staged files it
contains), then renames `.new` over the archive and deletes the staged files and the journal.
After a crash, a journal means "committed": finish the rename and deletions. No journal means
"not committed": drop any `.new`; the staged files are merged first thing in the next run
(before anything new is staged, so a stage name is never overwritten).

Readers: between staging and the archive rename the values are in neither place, so collection
must not interleave with compaction. `CompactingCollector` does both under one directory lock;
run exactly one such reader per directory (the exporter).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from facefusion_tasks.metrics import multiproc

log = logging.getLogger(__name__)

ARCHIVE_ID = "archive"
STAGE_SUFFIX = ".stage"
JOURNAL_SUFFIX = ".journal"
NEW_SUFFIX = ".new"
#: Directory-wide lock serialising compaction with collection (and two exporters, if misrun).
DIRECTORY_LOCK = ".compaction.lock"

#: Types whose values add up across processes.
_SUMMED_TYPES = ("counter", "histogram", "summary")
#: Gauge modes whose dead-pid values stay part of the result, merged with the same aggregation.
_MERGED_GAUGE_MODES = ("min", "max", "sum", "mostrecent")
_LIVE_GAUGE_MODES = ("liveall", "livemin", "livemax", "livesum", "livemostrecent")


@dataclass(frozen=True)
class MetricFile:
    """A prometheus_client multiprocess file name, parsed."""

    name: str
    prefix: str  # "counter", "histogram", "summary" or "gauge_<mode>"
    pid: int

    @property
    def archive_name(self) -> str:
        return f"{self.prefix}_{ARCHIVE_ID}.db"

    @property
    def gauge_mode(self) -> str:
        return self.prefix.split("_", 1)[1] if self.prefix.startswith("gauge_") else ""


def parse_name(name: str) -> MetricFile | None:
    """`counter_123.db` -> MetricFile; None for archives, our own files and anything else."""
    if not name.endswith(".db"):
        return None
    prefix, _, pid = name[: -len(".db")].rpartition("_")
    if not pid.isdigit() or not prefix:
        return None
    if prefix in _SUMMED_TYPES or (
        prefix.startswith("gauge_")
        and prefix[len("gauge_") :] in _MERGED_GAUGE_MODES + _LIVE_GAUGE_MODES + ("all",)
    ):
        return MetricFile(name, prefix, int(pid))
    return None


def pid_exists(pid: int) -> bool:
    """Whether /proc shows this pid (zombies included: conservative, they still count as alive)."""
    return os.path.exists(f"/proc/{pid}")


@dataclass
class CompactionResult:
    """What one compaction run did."""

    dead_pids: list[int] = field(default_factory=list)
    merged_files: int = 0
    deleted_files: int = 0
    seconds: float = 0.0


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive lock over the directory's compaction and collection."""
    fd = os.open(directory / DIRECTORY_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def compact(
    directory: Path,
    *,
    is_alive: Callable[[int], bool] = pid_exists,
    locked: bool = False,
) -> CompactionResult:
    """Fold dead pids' files into archives and drop their live gauges; see the module docstring.

    `locked=True` when the caller already holds `directory_lock` (the collector does).
    """
    directory = Path(directory)
    if not locked:
        with directory_lock(directory):
            return compact(directory, is_alive=is_alive, locked=True)
    started = time.perf_counter()
    result = CompactionResult()
    _recover(directory)
    # Staged files an interrupted run left behind go into the archive before anything new is
    # staged, so a stage name can never be reused while it still holds values.
    result.merged_files = _merge_staged(directory)
    by_pid: dict[int, list[MetricFile]] = {}
    for entry in os.scandir(directory):
        parsed = parse_name(entry.name)
        if parsed is not None and parsed.gauge_mode != "all":
            by_pid.setdefault(parsed.pid, []).append(parsed)
        elif entry.name.startswith(multiproc.LOCK_PREFIX) and entry.name.endswith(
            multiproc.LOCK_SUFFIX
        ):
            number = entry.name[len(multiproc.LOCK_PREFIX) : -len(multiproc.LOCK_SUFFIX)]
            if number.isdigit():
                by_pid.setdefault(int(number), [])
    me = os.getpid()
    for pid in sorted(by_pid):
        if pid == me or is_alive(pid):
            continue
        if _retire(directory, pid, by_pid[pid], is_alive, result):
            result.dead_pids.append(pid)
    result.merged_files += _merge_staged(directory)
    result.seconds = time.perf_counter() - started
    return result


def _retire(
    directory: Path,
    pid: int,
    files: list[MetricFile],
    is_alive: Callable[[int], bool],
    result: CompactionResult,
) -> bool:
    """Stage a dead pid's files under its lock; False if it turned out to be alive."""
    lock = multiproc.lock_path(directory, pid)
    fd = multiproc.acquire_lock(lock, blocking=False)
    if fd is None:
        return False  # held: a process with this pid is alive (or starting) after all
    try:
        if is_alive(pid):
            return False  # a process that takes no lock got the pid between our two checks
        for metric_file in files:
            path = directory / metric_file.name
            if metric_file.gauge_mode in _LIVE_GAUGE_MODES:
                path.unlink(missing_ok=True)
                result.deleted_files += 1
                continue
            staged = directory / (metric_file.name + STAGE_SUFFIX)
            if staged.exists():
                # Cannot happen after the merge at the start of the run; never overwrite values.
                log.error("%s is still staged; leaving %s for the next run", staged.name, path.name)
                continue
            try:
                os.rename(path, staged)
            except FileNotFoundError:
                continue
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _recover(directory: Path) -> None:
    """Finish a committed merge or roll back an uncommitted one left by a crash."""
    for journal in directory.glob("*" + JOURNAL_SUFFIX):
        archive = directory / journal.name[: -len(JOURNAL_SUFFIX)]
        try:
            staged = json.loads(journal.read_text())
        except (OSError, ValueError):
            log.error("unreadable compaction journal %s; leaving it for a human", journal)
            continue
        new = archive.with_name(archive.name + NEW_SUFFIX)
        if new.exists():
            os.replace(new, archive)
        for name in staged:
            (directory / name).unlink(missing_ok=True)
        journal.unlink()
        log.warning("finished an interrupted compaction of %s", archive.name)
    for leftover in [*directory.glob("*" + NEW_SUFFIX), *directory.glob("*.journal.tmp")]:
        leftover.unlink(missing_ok=True)


def _merge_staged(directory: Path) -> int:
    """Merge every staged file into its archive, one committed transaction per archive."""
    groups: dict[str, list[Path]] = {}
    for staged in directory.glob("*.db" + STAGE_SUFFIX):
        parsed = parse_name(staged.name[: -len(STAGE_SUFFIX)])
        if parsed is not None:
            groups.setdefault(parsed.archive_name, []).append(staged)
    merged = 0
    for archive_name, candidates in sorted(groups.items()):
        staged_files = [p for p in sorted(candidates) if _readable(p)]
        if not staged_files:
            continue
        mode = archive_name.split("_")[1] if archive_name.startswith("gauge_") else ""
        archive = directory / archive_name
        sources = [archive] if archive.exists() else []
        values = _combine([*sources, *staged_files], mode)
        new = archive.with_name(archive.name + NEW_SUFFIX)
        _write(new, values)
        journal = archive.with_name(archive.name + JOURNAL_SUFFIX)
        tmp = journal.with_name(journal.name + ".tmp")
        tmp.write_text(json.dumps(sorted(p.name for p in staged_files)))
        os.replace(tmp, journal)  # the commit point
        os.replace(new, archive)
        for staged in staged_files:
            staged.unlink(missing_ok=True)
        journal.unlink()
        merged += len(staged_files)
    return merged


def _readable(staged: Path) -> bool:
    """Set a torn file (a process killed mid-write) aside instead of failing every later run."""
    try:
        for _ in MmapedDict.read_all_values_from_file(str(staged)):
            pass
        return True
    except (RuntimeError, ValueError, struct.error, UnicodeDecodeError):
        corrupt = staged.with_name(staged.name + ".corrupt")
        os.replace(staged, corrupt)
        log.error("unreadable metrics file %s set aside as %s", staged.name, corrupt.name)
        return False


def _combine(paths: Iterable[Path], mode: str) -> dict[str, tuple[float, float]]:
    """Values per key across files, aggregated the way MultiProcessCollector would."""
    combined: dict[str, tuple[float, float]] = {}
    for path in paths:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):
            if key not in combined:
                combined[key] = (value, timestamp)
                continue
            old_value, old_timestamp = combined[key]
            if mode == "min":
                combined[key] = (min(old_value, value), 0.0)
            elif mode == "max":
                combined[key] = (max(old_value, value), 0.0)
            elif mode == "mostrecent":
                if timestamp > old_timestamp:
                    combined[key] = (value, timestamp)
            else:  # counters, histogram buckets/sums, summaries, sum gauges
                combined[key] = (old_value + value, 0.0)
    return combined


def _write(path: Path, values: dict[str, tuple[float, float]]) -> None:
    path.unlink(missing_ok=True)
    store = MmapedDict(str(path))
    try:
        for key, (value, timestamp) in values.items():
            store.write_value(key, value, timestamp)
    finally:
        store.close()


class CompactingCollector:
    """MultiProcessCollector that compacts dead pids first, under the directory lock."""

    def __init__(self, directory: Path, *, is_alive: Callable[[int], bool] = pid_exists) -> None:
        self.directory = Path(directory)
        self.is_alive = is_alive
        self.compacted_processes = 0
        self.last = CompactionResult()
        self.files = 0
        self._mutex = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # names are dynamic; never collect at registration time

    def collect(self) -> Iterable[Metric]:
        with self._mutex, directory_lock(self.directory):
            try:
                self.last = compact(self.directory, is_alive=self.is_alive, locked=True)
                self.compacted_processes += len(self.last.dead_pids)
            except Exception:
                # A failed compaction must not cost the scrape (nor dip the counters): finish
                # what was committed, then read staged files too, as long as no journal says
                # they are already in an archive.
                log.exception("metrics compaction failed in %s", self.directory)
                try:
                    _recover(self.directory)
                except Exception:
                    log.exception("metrics compaction recovery failed in %s", self.directory)
            files = [str(p) for p in self.directory.glob("*.db")]
            self.files = len(files)
            if not any(self.directory.glob("*" + JOURNAL_SUFFIX)):
                files += [str(p) for p in self.directory.glob("*.db" + STAGE_SUFFIX)]
            metrics = list(MultiProcessCollector.merge(files, accumulate=True))
        return metrics
