"""Bytes a chunk reads from object storage against its span's share of the file. A real S3
server (SeaweedFS, as in the tests) behind a counting proxy; each chunk's span is decoded by the
project's own FrameReader from a URL it signs, exactly as a chunk worker does.
Usage: python scripts/bench_s3.py [--seconds 120] [--chunk-seconds 10] [--gop 2]"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefusion_tasks import objects  # noqa: E402
from facefusion_tasks.jobs import plan_chunks  # noqa: E402
from facefusion_tasks.video.probe import frame_timestamps, probe  # noqa: E402
from facefusion_tasks.video.reader import FrameReader  # noqa: E402
from facefusion_tasks.video.samples import make_sample_video  # noqa: E402
from tests.s3server import CountingProxy, client, s3_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="clip length")
    parser.add_argument("--chunk-seconds", type=float, default=10.0)
    parser.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, s3_server(Path(work) / "s3") as server:
        clip = make_sample_video(
            Path(work) / "clip.mp4", seconds=args.seconds, width=args.width,
            height=args.height, faces=2, audio=True, keyframe_interval=round(25 * args.gop),
        )  # fmt: skip
        size = clip.stat().st_size
        with CountingProxy(server.port) as proxy:
            # The project's client signs for the proxy's address; the proxy passes Host on.
            os.environ.update(server.env(proxy.endpoint))
            client(server.env()).create_bucket(Bucket="bench")
            ref = objects.ObjectRef("bench", "clip.mp4")
            objects.upload(clip, ref)
            proxy.reset()
            info = probe(ref)
            probe_bytes = proxy.bytes_sent
            proxy.reset()
            timestamps, time_base = frame_timestamps(ref)
            plan_bytes = proxy.bytes_sent
            chunks = plan_chunks(timestamps, time_base, chunk_seconds=args.chunk_seconds)
            duration = info.duration
            print(f"clip: {args.seconds:g} s {args.width}x{args.height} 25 fps, keyframe every "
                  f"{args.gop:g} s, AAC audio, {size} bytes; {len(chunks)} chunks of "
                  f"{args.chunk_seconds:g} s")  # fmt: skip
            print(
                f"probe (submit): {probe_bytes} bytes; plan (every timestamp): {plan_bytes} bytes"
            )
            print()
            print("| chunk | frames | span s | share of file (bytes) | bytes read | read ÷ share |")
            print("|---:|---:|---:|---:|---:|---:|")
            ratios = []
            for chunk in chunks:
                start = float((chunk.start_pts - timestamps[0]) * time_base)
                end = duration if chunk.end_pts is None else float(chunk.end_pts * time_base)
                share = size * (end - start) / duration
                proxy.reset()
                with FrameReader(info, start_pts=chunk.start_pts, end_pts=chunk.end_pts) as reader:
                    frames = sum(1 for _ in reader)
                assert frames == chunk.frames, (frames, chunk.frames)
                ratio = proxy.bytes_sent / share
                ratios.append(ratio)
                print(f"| {chunk.index} | {frames} | {end - start:.2f} | {share:.0f} | "
                      f"{proxy.bytes_sent} | {ratio:.2f} |")  # fmt: skip
            ratios.sort()
            print()
            print(f"read ÷ share: median {ratios[len(ratios) // 2]:.2f}, max {ratios[-1]:.2f}; "
                  f"a whole-file download per chunk would be {len(chunks):.0f}× the share "
                  f"on average")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
