"""Chunk planning covers every frame exactly once, on the video's own timestamps."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

from facefusion_tasks.jobs import Chunk, plan_chunks


def _covers(chunks: list[Chunk], pts: list[int]) -> None:
    taken = []
    for chunk in chunks:
        inside = [
            p for p in pts if p >= chunk.start_pts and (chunk.end_pts is None or p < chunk.end_pts)
        ]
        assert len(inside) == chunk.frames
        taken += inside
    assert sorted(taken) == sorted(pts)


def test_constant_rate_splits_on_seconds() -> None:
    pts = [i * 512 for i in range(250)]  # 30 fps in 1/15360
    chunks = plan_chunks(pts, Fraction(1, 15360), chunk_seconds=2)
    assert [c.frames for c in chunks] == [60, 60, 60, 60, 10]
    _covers(chunks, pts)
    # A tail shorter than min_frames joins the chunk before it.
    assert [
        c.frames for c in plan_chunks(pts, Fraction(1, 15360), chunk_seconds=2, min_frames=11)
    ] == [60, 60, 60, 70]
    assert chunks[0].span == Fraction(2)
    assert chunks[-1].end_pts is None and chunks[-1].span is None


def test_no_chunk_holds_fewer_than_min_frames_at_a_low_rate() -> None:
    # 1 fps in 2 s chunks: 2-frame segments get no B-frame delay from x264 while longer ones
    # get 2 frames', and such a mix stitched into an mp4 whose video track was 2 s short.
    pts = list(range(20))
    chunks = plan_chunks(pts, Fraction(1), chunk_seconds=2)
    assert [c.frames for c in chunks] == [8, 12]
    _covers(chunks, pts)
    assert chunks[0].span == Fraction(8)


def test_variable_rate_uses_real_timestamps() -> None:
    pts, t = [], 0
    for i in range(200):
        pts.append(t)
        t += 1000 if i % 3 else 3000  # irregular steps, 1/90000 time base
    chunks = plan_chunks(pts, Fraction(1, 90000), chunk_seconds=0.5)
    _covers(chunks, pts)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.end_pts == b.start_pts
        assert a.span == Fraction(b.start_pts - a.start_pts, 90000)


def test_unsorted_input_and_single_chunk() -> None:
    pts = [3, 1, 2, 0]
    chunks = plan_chunks(pts, Fraction(1, 25), chunk_seconds=100)
    assert chunks == [Chunk(0, 0, None, 4, None)]


def test_round_trip_json() -> None:
    chunk = Chunk(2, 100, 200, 5, Fraction(1, 3))
    assert Chunk.from_json(chunk.to_json()) == chunk
    with pytest.raises(ValueError):
        plan_chunks([0], Fraction(1, 25), chunk_seconds=0)


def test_a_probe_survives_the_job_record() -> None:
    from pathlib import Path

    from facefusion_tasks.video.probe import VideoInfo

    info = VideoInfo(
        path=Path("/data/in.mp4"), width=321, height=241, rotation=90,
        frame_rate=Fraction(30000, 1001), time_base=Fraction(1, 90000), frame_count=7,
        duration=0.25, start_pts=0, audio_codecs=("aac",), video_codec="h264",
        pix_fmt="yuv420p", variable_frame_rate=True, stored_width=241, stored_height=321,
    )  # fmt: skip
    import json

    assert VideoInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert info.has_audio and info.carries_streams
    # A record written before every audio track was kept: its first stream, and its flag.
    older = info.to_json()
    del older["audio_codecs"], older["colour"], older["subtitle_codecs"]
    older |= {"has_audio": True, "audio_codec": "aac"}
    assert VideoInfo.from_json(older) == info
    # The picture's stream is recorded only when it is not the first, its field order only
    # when it is interlaced, so workers from before those fields still read the common
    # record during an upgrade; fields a newer planner adds are ignored here likewise.
    assert not {"video_stream", "field_order", "last_frame"} & set(info.to_json())
    second = dataclasses.replace(
        info, video_stream=1, field_order="tt", last_frame=Fraction(12, 25)
    )
    assert second.to_json()["last_frame"] == "12/25"
    assert VideoInfo.from_json(json.loads(json.dumps(second.to_json()))) == second
    assert VideoInfo.from_json(info.to_json() | {"from_a_newer_planner": 1}) == info
