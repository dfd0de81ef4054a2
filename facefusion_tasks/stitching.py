"""Joining a job's segments into its verified output, and finishing a commit a stitcher began."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from facefusion_tasks import objects, policy
from facefusion_tasks.commits import COMMIT_METADATA, commit, commit_mark, fence_stale, marked
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import FaceFusionError, InputError, MediaError, OutputError
from facefusion_tasks.fingerprints import check_unchanged
from facefusion_tasks.images import is_image_target, read_header
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason
from facefusion_tasks.runner import beating, job_file, job_video_info
from facefusion_tasks.store import (
    CANCELLED,
    COMMITTING,
    DONE,
    RUNNING,
    STITCHING,
    SUCCEEDED,
    JobStore,
)
from facefusion_tasks.store_keys import new_token
from facefusion_tasks.video import ffbin, process
from facefusion_tasks.video.staging import StagedOutput
from facefusion_tasks.video.stitch import stitch_segments
from facefusion_tasks.workspace import for_job, remove_segments, scratch, segment

log = logging.getLogger(__name__)


def _finish_image_job(
    store: JobStore, settings: Settings, job_id: str, output: Location
) -> Location | None:
    """A stitch sent for an image job (by the stall sweep, or `retry`, once its one chunk is
    done): the chunk committed the output before it was marked done, so check the output
    (an object fetched to look at) and record the success the chunk's worker did not live to
    record."""
    try:
        if isinstance(output, ObjectRef):
            with scratch(settings, job_id) as local:
                complete = read_header(objects.download(output, local / output.name)).complete
        else:
            complete = read_header(output).complete
    except (InputError, OSError):
        complete = False
    if not complete:
        raise MediaError(f"{output.name}: the committed image is gone; submit the job again")
    if store.set_state(job_id, SUCCEEDED, only_from=(RUNNING, STITCHING, COMMITTING)):
        return output
    return None


def stitch_job(store: JobStore, settings: Settings, job_id: str) -> Location | None:
    """Join the segments without re-encoding, add the original audio, verify the result, then
    commit it: the job moves to COMMITTING (a cancel can no longer win) before the rename, so
    a cancel and a commit agree through the store. Idempotent: after success it does nothing.
    Sent for a job stuck in COMMITTING (its stitcher died there), it finishes that commit."""
    job = store.get(job_id)
    settings = for_job(settings, job)
    if job.get("state") == COMMITTING:
        return _resume_commit(store, settings, job_id, job)
    if job.get("state") not in (RUNNING, STITCHING):
        return None  # ended (cancelled, failed, succeeded) or lost with Redis's data
    if not store.all_chunks_done(job_id):
        # Sent before `retry` reopened the job to run a chunk again (a recovery's stitch still
        # in line, a stitch's own retry): it stitched a lost or stale segment, or failed the
        # job on it. The chunk that completes the set sends the stitch again.
        log.warning("job %s: a stitch came while chunks were still to run; ignored", job_id)
        return None
    # This attempt's token: only the latest stitch to begin may commit. Another that began
    # before it (a redelivered duplicate, one stopped and then superseded by a retry or the
    # sweep's new stitch) finds the job no longer its own and stands down.
    attempt = new_token()
    if not store.set_state(
        job_id, STITCHING, only_from=(RUNNING, STITCHING), also={"stitch": attempt}
    ):
        return None  # ended (cancelled, failed, succeeded)
    try:
        return _stitch(store, settings, job_id, job, attempt)
    except Exception as exc:
        if store.get(job_id).get("stitch") == attempt:
            raise
        # Stopped, then superseded by a later stitch (the sweep's, a retry's): its failure
        # (a timeout run out while it was stopped, say) is not the job's. The later one decides.
        log.warning("job %s: a superseded stitch failed (%s); the later one decides", job_id, exc)
        return None


def _stitch(
    store: JobStore, settings: Settings, job_id: str, job: dict[str, str], attempt: str
) -> Location | None:
    """stitch_job's work once this `attempt` holds the job in STITCHING."""
    target = job_file(job["target"], settings, what="target")
    output = job_file(job["output"], settings, what="output", output=True)
    if is_image_target(target):
        return _finish_image_job(store, settings, job_id, output)
    chunks = [store.chunk_plan(job_id, i) for i in range(int(job.get("chunks_total") or 0))]
    # The stitch reads the target's audio and subtitles: they must be the planned file's.
    check_unchanged(job.get("fingerprints", ""), [target])
    with scratch(settings, job_id) as local, beating(store, settings, job_id) as steady:
        segments = [
            (_segment_file(settings, job_id, c.index, job["output"], local), c.span) for c in chunks
        ]
        # An object output is stitched and verified here, then uploaded at commit.
        destination = output if isinstance(output, Path) else local / f"output{output.suffix}"
        try:
            staged = stitch_segments(
                segments,
                destination,
                audio_source=job_video_info(store, settings, job_id, target),
                settings=settings,
                frames=sum(c.frames for c in chunks),
                timeout=float(settings.chunk_time_limit),
            )
        except (InputError, MediaError) as exc:
            check_unchanged(job.get("fingerprints", ""), [target])  # its audio rewritten?
            # Only the stitch that holds the job (a superseded one's segments may be a rerun
            # chunk's, written since), and only when every segment is there (a missing one
            # is already named, and `retry` runs its chunk again).
            if isinstance(exc, MediaError) and all(path.is_file() for path, _ in segments):
                now = store.get(job_id)
                if now.get("stitch") == attempt and now.get("state") == STITCHING:
                    _drop_damaged(settings, job_id, job["output"], chunks, segments, exc)
            raise
        try:
            check_unchanged(job.get("fingerprints", ""), [target])
        except InputError:
            staged.discard()
            raise
        # What is about to be put in place, recorded with the move to COMMITTING (one step,
        # this attempt's only): a stitcher that dies after it leaves a job whose output a
        # later stitch can recognise or finish. Two steps let a duplicate's mark replace this
        # one's between them, and each stood down for the other: stuck, then failed.
        mark = commit_mark(staged, output)
        # With the sweep's count of recoveries so far: only a later claim may resume it.
        mark["recoveries"] = int(store.get(job_id).get("recoveries") or 0)
        recorded = json.dumps(mark)  # as the job's record holds it, compared as text after
        if not store.set_state(
            job_id, COMMITTING, only_from=(STITCHING,), expect={"stitch": attempt},
            also={"commit": recorded},
        ):  # fmt: skip
            # Cancelled (or failed, or lost with Redis's data) while stitching, or a later
            # stitch began: the user's file was never touched.
            staged.discard()
            if store.state(job_id) == CANCELLED:
                remove_segments(settings, job_id, output=job["output"])
            return None
        if not _still_ours(store, job_id, recorded):  # stopped, then superseded by a retry
            staged.discard()
            return None

        def own_upload(upload_id: str) -> None:
            # Recorded before any part goes up: `retry`, or the stitch that fails the job as
            # stalled, aborts it (commits.fence_stale), so that this stitcher, stopped now and
            # woken later, cannot complete it over the job's next output or a later job's.
            if not store.set_state(
                job_id, COMMITTING, only_from=(COMMITTING,), expect={"commit": recorded},
                also={"upload": upload_id},
            ):  # fmt: skip
                raise OutputError(f"{output}: this stitch is no longer the job's")

        # An upload's completion waits on the server with no CPU here (minutes, for a big
        # object): beat on. A stitcher stopped meanwhile stops beating all the same.
        steady.set()
        try:
            commit(staged, output, token=mark.get("token"), started=own_upload)
        except OutputError:
            if _still_ours(store, job_id, recorded):
                raise
            return None  # `retry` removed its temp, or aborted its upload (commits.fence_stale)
        except Exception as exc:
            if not policy.retryable(exc):
                raise
            # The upload failed for now (a 503; Redis lost while recording its id), and was
            # aborted (the key holds what it held). Back to STITCHING, so the retry stitches
            # again: left in COMMITTING, the retry took it for a commit in progress, and the
            # sweep, finding no upload, failed the job.
            if store.set_state(
                job_id, STITCHING, only_from=(COMMITTING,), expect={"commit": recorded}
            ):
                raise
            return None  # no longer this stitch's (`retry` reopened it, aborting its upload)
    if not store.set_state(job_id, SUCCEEDED, only_from=(COMMITTING,), expect={"commit": recorded}):
        return None  # reopened (and maybe committing again) meanwhile: the next stitch's
    remove_segments(settings, job_id, output=job["output"])
    return output


def _still_ours(store: JobStore, job_id: str, recorded: str) -> bool:
    """Whether the job is still COMMITTING this stitch's output (its `recorded` mark): a
    stitcher stopped in COMMITTING (a frozen process, a suspended host) whose job `retry`
    stitched again may wake after that job succeeded, and another job wrote the same output
    since."""
    job = store.get(job_id)
    return job.get("state") == COMMITTING and job.get("commit") == recorded


def _resume_commit(
    store: JobStore, settings: Settings, job_id: str, job: dict[str, str]
) -> Location | None:
    """The stitcher died in COMMITTING, after verifying its output (a sweep claimed the job
    after stall_seconds without a heartbeat, so it is not still working). Its output is in place, or its verified
    temp still waits beside the destination: finish and record the success. Otherwise the
    job fails as stalled, and `retry` stitches it again from the segments."""
    mark = json.loads(job.get("commit") or "{}")
    if int(job.get("recoveries") or 0) <= int(mark.get("recoveries", -1)):
        # No sweep has found the stitcher silent since it began committing: a duplicate
        # message (a redelivery) while it may still be uploading. It finishes on its own.
        return None
    output = job_file(job["output"], settings, what="output", output=True)
    if is_image_target(job_file(job["target"], settings, what="target")):
        # An image chunk marks itself done only once its output is in place.
        if store.chunks(job_id)[0].get("state") == DONE:
            return _finish_image_job(store, settings, job_id, output)
        raise MediaError("the swap stopped while committing its image", reason=Reason.STALLED)
    if isinstance(output, ObjectRef):
        try:
            committed = objects.head(output).get("Metadata", {}).get(COMMIT_METADATA)
        except InputError:  # no object there
            committed = None
        if not mark.get("token") or committed != mark["token"]:
            # Its stitcher, stopped mid-upload, must not complete it on waking.
            upload = job.get("upload", "")
            fence_stale(output, mark, upload=upload)
            if store.get(job_id).get("upload", "") != upload:
                return None  # it woke before its upload began, and uploads: it finishes
            raise MediaError("the stitch stopped while uploading its output", reason=Reason.STALLED)
    elif not marked(output, mark):
        temp = output.with_name(str(mark.get("temp") or ".missing"))
        if not marked(temp, mark):
            raise MediaError(
                "the stitch stopped while committing its output, and its verified file is gone",
                reason=Reason.STALLED,
            )
        try:
            StagedOutput(temp, output).commit()
        except OutputError:
            if store.state(job_id) != COMMITTING:
                return None  # `retry` reopened the job and removed the temp first
            raise
    log.warning("job %s: the commit its stitcher began is finished", job_id)
    if not store.set_state(
        job_id, SUCCEEDED, only_from=(COMMITTING,), expect={"commit": job.get("commit", "")}
    ):
        return None
    remove_segments(settings, job_id, output=job["output"])
    return output


def _drop_damaged(
    settings: Settings,
    job_id: str,
    output: str,
    chunks: Sequence[Chunk],
    segments: Sequence[tuple[Path, Fraction | None]],
    failure: MediaError,
) -> None:
    """After a failed stitch: re-count each segment (demux only, on failure alone, so a
    good stitch pays nothing), and remove those that ffmpeg read and found wrong (an error
    reading it back, or not its chunk's frames), then raise naming them. `retry` runs a chunk
    whose segment is gone again; a truncated one stayed, and every retry stitched it and
    failed the same way, blaming the concat list. A count that could not run or ran out of
    time proves nothing about the segment: nothing is removed then."""
    exe = ffbin.ffmpeg_exe(settings.ffmpeg)
    damaged: list[tuple[int, str]] = []
    for chunk, (path, _) in zip(chunks, segments, strict=True):
        try:
            found = process.count_video(path, ffmpeg=exe).frames
        except MediaError as exc:
            if not str(exc).startswith(f"{path.name} does not read back"):
                return  # ffmpeg did not run, or timed out: the host's state, not the file's
            damaged.append((chunk.index, policy.one_line(str(exc))))
            continue
        if found != chunk.frames:
            damaged.append((chunk.index, f"{found} frames, {chunk.frames} planned"))
    if not damaged:
        return
    kept: list[int] = []
    for index, _ in damaged:
        where = segment(settings, job_id, index, output=output)
        try:
            if isinstance(where, Path):
                where.unlink(missing_ok=True)
            else:
                objects.delete(where)
        except (OSError, FaceFusionError) as exc:
            log.warning("job %s: damaged segment %s stays: %s", job_id, where, exc)
            kept.append(index)
    indexes = ", ".join(str(i) for i, _ in damaged)
    then = (
        "removed, so `retry` runs those chunks again"
        if not kept
        else f"chunk {', '.join(map(str, kept))}'s could not be removed: remove it for `retry`"
    )
    raise MediaError(f"segments damaged (chunk {indexes}: {damaged[0][1]}); {then}") from failure


def _segment_file(settings: Settings, job_id: str, index: int, output: str, local: Path) -> Path:
    """Chunk `index`'s segment as a file: on the shared storage, or fetched into `local`."""
    where = segment(settings, job_id, index, output=output)
    if isinstance(where, Path):
        return where
    try:
        return objects.download(where, local / where.name)
    except InputError:  # missing: the stitcher's problem, as for a missing file
        raise MediaError(f"segments missing: {where.name}") from None
