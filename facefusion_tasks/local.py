"""Local mode: one process runs the whole job (the default when no broker is configured)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, ModelError
from facefusion_tasks.faces.loader import LoadedModels, load_models, model_paths
from facefusion_tasks.faces.synthetic import background, bundled_photo, draw_face
from facefusion_tasks.images import check_image_target, is_image_target
from facefusion_tasks.inputs import Sources, check_output, read_image, source_paths
from facefusion_tasks.pipeline import SwapJob, SwapResult, run_swap
from facefusion_tasks.still import swap_image
from facefusion_tasks.video.argv import muxer_for
from facefusion_tasks.video.codecs import check_encoder
from facefusion_tasks.video.probe import VideoInfo, probe


def run_local(
    source: Sources,
    target: Path,
    output: Path,
    *,
    settings: Settings,
    reference: Path | None = None,
    show_progress: bool = False,
) -> tuple[SwapResult, LoadedModels]:
    """Validate cheap things first (so bad input fails in milliseconds), then load models once
    and stream the video through them; a still-image target is one frame, written in its own
    format. `source`: one image, or several photos of the same person, whose identities are
    averaged."""
    sources = source_paths(source)
    info: VideoInfo | None = None
    if is_image_target(target):
        header = check_image_target(target, max_pixels=settings.max_image_pixels)
        check_output(output, target, inputs=(*sources, reference), image_format=header.format)
    else:
        info = probe(target, ffmpeg=settings.ffmpeg, max_frame_pixels=settings.max_frame_pixels)
        check_output(output, target, inputs=(*sources, reference))
        check_encoder(
            settings.video_encoder, muxer_for(output), width=info.width, height=info.height
        )
    for path in sources:
        read_image(path, max_pixels=settings.max_image_pixels)
    if reference is not None:
        # A reference face always means "only this person" (as for submitted jobs).
        read_image(reference, max_pixels=settings.max_image_pixels)
        settings = settings.replace(face_selector="reference")
    elif settings.face_selector == "reference":
        raise InputError("--face-selector reference needs --reference-face IMAGE")
    loaded = load_models(settings)
    loaded.engine.set_sources(sources)
    if reference is not None:
        loaded.engine.set_reference(reference)
    frames = 1 if info is None else info.frame_count
    job = SwapJob(sources=sources, target=target, output=output, reference=reference, frames=frames)
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
    result, loaded = run_local(source, target, output, settings=settings, show_progress=not quiet)
    return (
        result.as_dict()
        | loaded.facts()
        | {
            "target": str(target),
            "source": str(source),
        }
    )
