"""Local mode: one process runs the whole job (the default when no broker is configured)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import cv2

from facefusion_tasks import objects, observe
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, ModelError
from facefusion_tasks.faces.loader import LoadedModels, load_models, model_paths
from facefusion_tasks.faces.synthetic import background, bundled_photo, draw_face
from facefusion_tasks.images import check_image_target, is_image_target
from facefusion_tasks.inputs import Source, Sources, check_output, read_image, source_paths
from facefusion_tasks.jobs import check_chunking
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.pipeline import SwapJob, SwapResult, run_swap
from facefusion_tasks.reasons import Reason
from facefusion_tasks.still import swap_image
from facefusion_tasks.storage import check_outside_work
from facefusion_tasks.video.argv import muxer_for
from facefusion_tasks.video.ffbin import ffmpeg_exe
from facefusion_tasks.video.probe import VideoInfo, frame_timestamps, probe
from facefusion_tasks.video.writer import resolve_encoder
from facefusion_tasks.workspace import local_copy, scratch


def run_local(
    source: Sources,
    target: Source,
    output: Source,
    *,
    settings: Settings,
    reference: Source | None = None,
    show_progress: bool = False,
    chunk_seconds: float | None = None,
) -> tuple[SwapResult, LoadedModels]:
    """Validate cheap things first (so bad input fails in milliseconds), then load models once
    and stream the video through them; a still-image target is one frame, written in its own
    format. `source`: one image, or several photos of the same person, whose identities are
    averaged. Any location may be an s3://bucket/key object in an allowed bucket: images (a
    still target too) are fetched, a video is read through a signed URL, and an object output
    is written and verified here, then uploaded whole. `chunk_seconds` (None: the setting's)
    is checked against the video as `submit` checks it, though nothing is cut here."""
    started = time.perf_counter()
    try:
        done = _run_local(source, target, output, settings, reference, show_progress, chunk_seconds)
    except Exception:  # not an interrupt: that request did not fail
        observe.swap_run(ok=False, seconds=time.perf_counter() - started)
        raise
    observe.swap_run(ok=True, seconds=time.perf_counter() - started)
    return done


def _run_local(
    source: Sources,
    target: Source,
    output: Source,
    settings: Settings,
    reference: Source | None,
    show_progress: bool,
    chunk_seconds: float | None,
) -> tuple[SwapResult, LoadedModels]:
    """run_local's work."""
    settings.validate()  # Settings built in code never passed from_env's checks
    sources_at = tuple(_locate(s, settings, what="source image") for s in source_paths(source))
    target_at = _locate(target, settings, what="target")
    output_at = _locate(output, settings, what="output", output=True)
    reference_at = None if reference is None else _locate(reference, settings, what="reference")
    info: VideoInfo | None = None
    target_file = target_at
    if is_image_target(target_at):
        target_file = local_copy(settings, target_at)
        header = check_image_target(target_file, max_pixels=settings.max_image_pixels)
        check_output(
            output_at, target_at, inputs=(*sources_at, reference_at), image_format=header.format
        )
    else:
        info = probe(target_at, ffmpeg=settings.ffmpeg, max_frame_pixels=settings.max_frame_pixels)
        # Nothing is cut into chunks here, but the same job must not run here and be refused
        # once a broker is set (--chunk-seconds 0.1, FACEFUSION_MAX_CHUNKS): the submit checks.
        check_chunking(
            info.duration,
            chunk_seconds or settings.chunk_seconds,
            min_chunk_seconds=settings.min_chunk_seconds,
            max_chunks=settings.max_chunks,
        )
        check_output(output_at, target_at, inputs=(*sources_at, reference_at))
        # The frames a submitted job's plan counts, read the same way (a demux pass): a file
        # whose frames repeat timestamps is refused here as there, not swapped with times
        # the muxer made up (23 of 90 frames moved a tick, with no word).
        timestamps, _ = frame_timestamps(
            target_at, ffmpeg=settings.ffmpeg, stream=info.video_stream
        )
        if not timestamps:  # every packet hidden (an edit list of nothing)
            raise InputError(f"{target_at.name}: no video frames", reason=Reason.NO_FRAMES)
        info = dataclasses.replace(info, frame_count=len(timestamps))
        # The encoder this ffmpeg will really use, before any model loads.
        resolve_encoder(
            settings.video_encoder, ffmpeg_exe(settings.ffmpeg), muxer_for(str(output_at)),
            width=info.width, height=info.height, quality=settings.video_quality,
            frame_rate=info.frame_rate,
        )  # fmt: skip
    with scratch(settings, "local") as local:
        sources = tuple(local_copy(settings, at) for at in sources_at)
        for path in sources:
            read_image(path, max_pixels=settings.max_image_pixels)
        reference_file = None
        if reference_at is not None:
            # A reference face always means "only this person" (as for submitted jobs).
            reference_file = local_copy(settings, reference_at)
            read_image(reference_file, max_pixels=settings.max_image_pixels)
            settings = settings.replace(face_selector="reference")
        elif settings.face_selector == "reference":
            raise InputError("--face-selector reference needs --reference-face IMAGE")
        written = output_at if isinstance(output_at, Path) else local / output_at.name
        job = SwapJob(
            sources=sources,
            target=target_file,
            output=written,
            reference=reference_file,
            frames=1 if info is None else info.frame_count,
        )
        result, loaded = _swap(job, info, settings, show_progress)
        if isinstance(output_at, ObjectRef):
            # Verified as a file above (an image or a video alike), only then uploaded.
            objects.upload(written, output_at)
            result.output = output_at
    return result, loaded


def _locate(value: Source, settings: Settings, *, what: str, output: bool = False) -> Location:
    """Local mode takes any path but the fleet's work area (where a fleet sharing these
    settings would remove it); an object only in an allowed bucket."""
    where = objects.location(value)
    if isinstance(where, ObjectRef):
        where = objects.confine(where, settings, what=what)
    check_outside_work(where, settings, what=what, output=output)
    return where


def _swap(
    job: SwapJob, info: VideoInfo | None, settings: Settings, show_progress: bool
) -> tuple[SwapResult, LoadedModels]:
    """Load the models and swap: a still image (no `info`) at once, a video streamed."""
    loaded = load_models(settings)
    loaded.engine.set_sources(job.sources)
    if job.reference is not None:
        loaded.engine.set_reference(job.reference)
    if info is None:
        result, staged = swap_image(job, loaded.engine, settings)
        staged.commit()
        return result, loaded
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=info.frame_count or None, unit="frame", file=sys.stderr, leave=False)
    try:
        result = run_swap(
            job,
            loaded.engine,
            settings,
            info=info,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    return result, loaded


def _has_real_models(models_dir: Path) -> bool:
    from facefusion_tasks.models.standin import is_standin

    try:
        paths = model_paths(models_dir)
    except ModelError:
        return False
    return not any(is_standin(p) for p in paths.values())


def run_demo(
    directory: Path, *, settings: Settings, seconds: float = 6.0, quiet: bool = False
) -> dict[str, Any]:
    """Make a sample clip (with audio) and a source face, then swap end to end. Uses the real
    models when they are installed, stand-ins otherwise — and says which."""
    from facefusion_tasks.models.standin import make_test_models
    from facefusion_tasks.video.samples import make_sample_video

    directory.mkdir(parents=True, exist_ok=True)
    real = _has_real_models(settings.models_dir)
    if not real:
        standins = directory / "standin-models"
        make_test_models(standins)
        if not quiet:
            print(
                f"note: no real models in {settings.models_dir}; using STAND-IN models written to "
                f"{standins} (run `facefusion-tasks models download` for real face swapping)",
                file=sys.stderr,
            )
        # The demo made these stand-ins itself: loading them is asked for here.
        settings = settings.replace(models_dir=standins, allow_standin_models=True)
    if real:
        # Real detectors need real faces: insightface ships photos in its wheel.
        from facefusion_tasks.video.samples import make_photo_video

        source = bundled_photo("Tom_Hanks_54745.png")
        photo = read_image(bundled_photo("t1.jpg"))
        target = make_photo_video(
            directory / "sample.mp4", photo, seconds=seconds, width=640, height=360, audio=True
        )
    else:
        target = make_sample_video(directory / "sample.mp4", seconds=seconds, faces=2, audio=True)
        source = directory / "source.png"
        image = background(256, 256, 0)
        draw_face(image, 128, 128, 90)
        cv2.imwrite(str(source), image)
    output = directory / "swapped.mp4"
    # A bar only for a person watching (as for swap): not in a log or a captured stderr.
    shown = not quiet and sys.stderr.isatty()
    result, loaded = run_local(source, target, output, settings=settings, show_progress=shown)
    return (
        result.as_dict()
        | loaded.facts()
        | {
            "target": str(target),
            "source": str(source),
        }
    )
