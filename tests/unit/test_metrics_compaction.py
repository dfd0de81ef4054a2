"""Compaction of dead workers' metric files: exact totals, fewer files, safe under pid reuse."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from facefusion_tasks.metrics import compaction, multiproc
from facefusion_tasks.metrics.compaction import CompactingCollector, compact

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: Above the kernel's pid_max (2**22), so /proc never has them: "dead" pids we can name.
FAKE_PID = 2**22 + 1000


def recycled_worker(task: tuple[int, float]) -> int:
    """One pool process = one Celery child recycled after a single task (max-tasks-per-child 1)."""
    frames, seconds = task
    from facefusion_tasks.metrics import definitions as d

    d.worker_processes.set(1)
    d.worker_busy.labels(queue="gpu").set(1)
    d.frames_processed_total.inc(frames)
    d.faces_swapped_total.inc(frames // 2)
    d.chunks_total.labels(outcome="succeeded", reason="none").inc()
    d.stage_duration_seconds.labels(stage="swap").observe(seconds)
    d.frame_duration_seconds.observe(seconds / frames)
    d.model_batch_limit.labels(model="swapper").set(8)
    d.worker_busy.labels(queue="gpu").set(0)
    return os.getpid()


def run_recycled_workers(directory: Path, tasks: list[tuple[int, float]]) -> set[int]:
    """Really run short-lived spawned processes writing to `directory`; their pids."""
    previous = os.environ.get(multiproc.PROMETHEUS_ENV)
    # Spawned children inherit the environment at start: they import prometheus_client fresh,
    # in multiprocess mode, the way a worker entrypoint that called prepare() would.
    os.environ[multiproc.PROMETHEUS_ENV] = str(directory)
    try:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes=2, maxtasksperchild=1) as pool:
            pids = set(pool.map(recycled_worker, tasks, chunksize=1))
            pool.close()
            pool.join()
    finally:
        if previous is None:
            os.environ.pop(multiproc.PROMETHEUS_ENV, None)
        else:
            os.environ[multiproc.PROMETHEUS_ENV] = previous
    return pids


def snapshot(directory: Path, *, include_live_gauges: bool = True) -> Samples:
    """What a plain prometheus_client scrape of the directory reports."""
    files = [str(p) for p in directory.glob("*.db")]
    samples: Samples = {}
    for metric in MultiProcessCollector.merge(files):
        if not include_live_gauges and metric.type == "gauge":
            continue
        for s in metric.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def assert_same(actual: Samples, expected: Samples) -> None:
    """Equal series and values; histogram `_sum`s only up to float rounding (merge order)."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):
            assert actual[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert actual[key] == value, key  # counts, buckets and counters: exact


def assert_not_backwards(before: Samples, after: Samples) -> None:
    for key, value in before.items():
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
            assert after.get(key, 0.0) >= value, key


def frames(samples: Samples) -> float:
    return samples[("facefusion_frames_processed_total", ())]


def write_values(path: Path, values: dict[str, tuple[float, float]]) -> None:
    store = MmapedDict(str(path))
    for key, (value, timestamp) in values.items():
        store.write_value(key, value, timestamp)
    store.close()


def frames_key() -> str:
    from facefusion_tasks.metrics import definitions as d

    counter = d.frames_processed_total
    return mmap_key(counter._name, counter._name + "_total", [], [], counter._documentation)


@pytest.fixture(scope="module")
def recycled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[int]]:
    """Eight recycled worker processes' files (made once: spawning costs ~0.3 s a process)."""
    directory = tmp_path_factory.mktemp("recycled")
    tasks = [(10 * (i + 1), 0.02 * (i + 1)) for i in range(8)]
    return directory, run_recycled_workers(directory, tasks)


@pytest.fixture()
def fleet(recycled: tuple[Path, set[int]], tmp_path: Path) -> tuple[Path, set[int]]:
    """A private copy of the recycled workers' directory for one test to mutate."""
    directory, pids = recycled
    for path in directory.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path, pids


def test_compaction_keeps_every_total_and_drops_the_files(fleet: tuple[Path, set[int]]) -> None:
    directory, pids = fleet
    assert len(pids) == 8  # eight distinct processes really ran
    before = snapshot(directory)
    assert frames(before) == sum(10 * (i + 1) for i in range(8))
    files_before = len(list(directory.glob("*.db")))

    result = compact(directory)

    assert sorted(result.dead_pids) == sorted(pids)
    after = snapshot(directory)
    counted = {k: v for k, v in before.items() if not k[0].startswith("facefusion_worker_")}
    counted = {k: v for k, v in counted.items() if k[0] not in {"facefusion_build_info"}}
    counted = {k: v for k, v in counted.items() if k[0] != "facefusion_model_batch_limit"}
    assert_same(after, counted)  # counters and histograms identical; live gauges of the dead gone
    remaining = sorted(p.name for p in directory.glob("*.db"))
    assert remaining == ["counter_archive.db", "histogram_archive.db"]
    assert files_before >= 8 * 4
    assert not list(directory.glob("pid_*.lock"))  # dead pids' locks are cleaned up too
    assert compact(directory).dead_pids == []  # idempotent, nothing left to do


def test_counters_never_go_backwards_across_repeated_compactions(
    fleet: tuple[Path, set[int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory, _ = fleet
    previous = snapshot(directory, include_live_gauges=False)
    compact(directory)
    current = snapshot(directory, include_live_gauges=False)
    assert_same(current, previous)
    # More recycled workers arrive after the first compaction, then compaction runs again.
    extra = run_recycled_workers(directory, [(7, 0.5), (9, 0.05)])
    grown = snapshot(directory, include_live_gauges=False)
    assert_not_backwards(current, grown)
    assert frames(grown) == frames(current) + 16
    for _ in range(3):
        result = compact(directory)
        after = snapshot(directory, include_live_gauges=False)
        assert_same(after, grown)
    assert sorted(p.name for p in directory.glob("*.db")) == [
        "counter_archive.db",
        "histogram_archive.db",
    ]
    assert not (set(result.dead_pids) & extra)  # compacted by the first of the three runs


def test_a_reused_pid_starting_fresh_is_not_double_counted(fleet: tuple[Path, set[int]]) -> None:
    directory, pids = fleet
    compact(directory)
    total = frames(snapshot(directory))
    reused = min(pids)
    # A new process gets the dead worker's pid number and opens counter_<pid>.db: the old one
    # was renamed away under the lock, so it starts from zero.
    write_values(directory / f"counter_{reused}.db", {frames_key(): (5.0, 0.0)})
    assert frames(snapshot(directory)) == total + 5
    compact(directory)  # ... then it dies too and is compacted
    assert frames(snapshot(directory)) == total + 5
    assert not (directory / f"counter_{reused}.db").exists()


def test_leftover_staged_values_survive_a_reused_pid_dying_again(tmp_path: Path) -> None:
    # An interrupted run staged pid P's file; before the next run, a new process reused P,
    # wrote its own counter_P.db and died. Both values must end up in the archive.
    write_values(tmp_path / f"counter_{FAKE_PID}.db.stage", {frames_key(): (3.0, 0.0)})
    write_values(tmp_path / f"counter_{FAKE_PID}.db", {frames_key(): (5.0, 0.0)})
    compact(tmp_path)
    assert frames(snapshot(tmp_path)) == 8.0
    assert sorted(p.name for p in tmp_path.glob("counter_*")) == ["counter_archive.db"]


def test_a_pid_whose_lock_is_held_is_alive_whatever_proc_says(tmp_path: Path) -> None:
    key = frames_key()
    write_values(tmp_path / f"counter_{FAKE_PID}.db", {key: (3.0, 0.0)})
    # A process (in another pid namespace, or just starting) holds the lock for this pid.
    held = multiproc.acquire_lock(multiproc.lock_path(tmp_path, FAKE_PID), blocking=False)
    assert held is not None
    try:
        assert compact(tmp_path).dead_pids == []
        assert (tmp_path / f"counter_{FAKE_PID}.db").exists()
    finally:
        os.close(held)
    assert compact(tmp_path).dead_pids == [FAKE_PID]
    assert frames(snapshot(tmp_path)) == 3.0


def test_a_pid_proc_shows_alive_is_left_alone(tmp_path: Path) -> None:
    write_values(tmp_path / f"counter_{FAKE_PID}.db", {frames_key(): (3.0, 0.0)})
    assert compact(tmp_path, is_alive=lambda pid: True).dead_pids == []
    assert (tmp_path / f"counter_{FAKE_PID}.db").exists()


def test_a_live_process_that_reused_the_pid_first_keeps_its_file(tmp_path: Path) -> None:
    # Same pid number, new live process (here: ourselves): its file carries the old values and
    # its own increments, exactly like plain prometheus_client, and is never compacted.
    me = os.getpid()
    write_values(tmp_path / f"counter_{me}.db", {frames_key(): (4.0, 0.0)})
    assert compact(tmp_path, is_alive=lambda pid: False).dead_pids == []
    assert frames(snapshot(tmp_path)) == 4.0


def gauge_key(name: str, labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    return mmap_key(name, name, list(labels), list(labels.values()), "help")


def test_gauges_follow_their_multiprocess_mode(tmp_path: Path) -> None:
    first, second = FAKE_PID, FAKE_PID + 1
    for pid, value, stamp in ((first, 3.0, 100.0), (second, 7.0, 50.0)):
        for mode in ("max", "min", "sum", "mostrecent", "livesum", "all"):
            key = gauge_key(f"g_{mode}")
            write_values(tmp_path / f"gauge_{mode}_{pid}.db", {key: (value, stamp)})
    before = snapshot(tmp_path)
    compact(tmp_path)
    after = snapshot(tmp_path)
    assert after[("g_max", ())] == before[("g_max", ())] == 7.0
    assert after[("g_min", ())] == before[("g_min", ())] == 3.0
    assert after[("g_sum", ())] == before[("g_sum", ())] == 10.0
    assert after[("g_mostrecent", ())] == before[("g_mostrecent", ())] == 3.0
    assert ("g_livesum", ()) not in after  # dead processes' live gauges drop out
    assert {k: v for k, v in after.items() if k[0] == "g_all"} == {
        k: v for k, v in before.items() if k[0] == "g_all"
    }  # per-pid series are data: left alone
    names = sorted(p.name for p in tmp_path.glob("*.db"))
    assert "gauge_max_archive.db" in names and f"gauge_all_{first}.db" in names


@pytest.fixture()
def failing_replace(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make os.replace fail once for a destination ending in `suffix` (a crash at that step)."""

    def arm(suffix: str) -> None:
        real = os.replace
        state = {"armed": True}

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if state["armed"] and str(dst).endswith(suffix):
                state["armed"] = False
                raise OSError("simulated crash")
            real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    return arm


@pytest.mark.parametrize(
    "crash_at",
    [".journal", "_archive.db"],
    ids=["before-commit", "after-commit"],
)
def test_an_interrupted_compaction_neither_loses_nor_doubles(
    fleet: tuple[Path, set[int]], failing_replace: Callable[[str], None], crash_at: str
) -> None:
    directory, _ = fleet
    expected = snapshot(directory, include_live_gauges=False)
    failing_replace(crash_at)
    with pytest.raises(OSError, match="simulated crash"):
        compact(directory)
    assert list(directory.glob("*.stage"))  # the crash left staged files behind
    # A scrape during the mess still reports exact totals (the collector recovers or reads the
    # staged files), and the next compaction finishes the job.
    collected = CompactingCollector(directory)
    scraped: Samples = {}
    for metric in collected.collect():
        if metric.type != "gauge":
            for s in metric.samples:
                scraped[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert_same(scraped, expected)
    compact(directory)
    assert_same(snapshot(directory, include_live_gauges=False), expected)
    leftovers = [p.name for p in directory.iterdir() if p.suffix in {".stage", ".new", ".journal"}]
    assert leftovers == []


def test_a_collector_failure_during_compaction_still_scrapes_exact_totals(
    fleet: tuple[Path, set[int]], failing_replace: Callable[[str], None]
) -> None:
    directory, _ = fleet
    expected = snapshot(directory, include_live_gauges=False)
    failing_replace(".journal")
    collector = CompactingCollector(directory)
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in collector.collect()
        if m.type != "gauge"
        for s in m.samples
    }
    assert_same(values, expected)


def test_a_torn_file_is_set_aside_not_fatal(tmp_path: Path) -> None:
    write_values(tmp_path / f"counter_{FAKE_PID}.db", {frames_key(): (2.0, 0.0)})
    torn = tmp_path / f"histogram_{FAKE_PID + 1}.db"
    torn.write_bytes((10_000).to_bytes(4, "little") + b"\0" * 60)  # claims more than it holds
    compact(tmp_path)
    assert frames(snapshot(tmp_path)) == 2.0
    assert (tmp_path / f"histogram_{FAKE_PID + 1}.db.stage.corrupt").exists()


def test_the_collector_reports_the_same_as_plain_prometheus_client(
    fleet: tuple[Path, set[int]],
) -> None:
    directory, _ = fleet
    plain = snapshot(directory, include_live_gauges=False)
    collector = CompactingCollector(directory)
    for _ in range(2):  # first scrape compacts, the second reads the archives
        ours = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for m in collector.collect()
            if m.type != "gauge"
            for s in m.samples
        }
        assert_same(ours, plain)
    assert collector.compacted_processes == 8
    assert collector.files == 2


def test_names_outside_the_scheme_are_ignored(tmp_path: Path) -> None:
    assert compaction.parse_name("counter_archive.db") is None
    assert compaction.parse_name("counter_12.db") == compaction.MetricFile(
        "counter_12.db", "counter", 12
    )
    assert compaction.parse_name("gauge_livesum_7.db") is not None
    assert compaction.parse_name("gauge_weird_7.db") is None
    assert compaction.parse_name("notes.txt") is None


def _claim_in_child(directory: Path, result: Any) -> None:
    try:
        multiproc.claim_directory(directory)
        result.put("claimed")
    except multiproc.DirectoryInUse as exc:
        result.put(str(exc))


def test_one_launcher_owns_a_metrics_directory_until_it_is_gone(tmp_path: Path) -> None:
    directory = tmp_path / "mp"
    fd = multiproc.claim_directory(directory)
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    child = context.Process(target=_claim_in_child, args=(directory, result))
    child.start()
    child.join(60)
    said = result.get(timeout=5)
    assert said.startswith(f"metrics directory {directory} belongs to the worker launcher with ")
    assert f"pid {os.getpid()};" in said
    os.close(fd)  # the owner exits: the next launcher takes the directory over
    child = context.Process(target=_claim_in_child, args=(directory, result))
    child.start()
    child.join(60)
    assert result.get(timeout=5) == "claimed"
    assert (directory / multiproc.OWNER_FILE).read_text() == f"{child.pid}\n"


def test_a_launcher_claims_its_directory_again_after_someone_deleted_it(tmp_path: Path) -> None:
    # The directory deleted under a running launcher took its lock along: a second launcher
    # was then let in, and ran a second exporter over the same files.
    directory = tmp_path / "mp"
    fd = multiproc.claim_directory(directory)
    assert multiproc.keep_claim(directory, fd) == fd  # nothing changed
    shutil.rmtree(directory)
    directory.mkdir()  # as the exporter recreates it
    fd = multiproc.keep_claim(directory, fd)
    assert (directory / multiproc.OWNER_FILE).read_text() == f"{os.getpid()}\n"
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    child = context.Process(target=_claim_in_child, args=(directory, result))
    child.start()
    child.join(60)
    assert "belongs to the worker launcher" in result.get(timeout=5)
    os.close(fd)
