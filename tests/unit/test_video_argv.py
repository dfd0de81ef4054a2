"""The ffmpeg command lines, checked as argv lists (nothing runs ffmpeg here)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from facefusion_tasks.video.argv import (
    audio_codec_args,
    decode_argv,
    encode_argv,
    extras_trim,
    extras_window,
    muxer_for,
    pix_fmt_for,
    subtitle_args,
)
from facefusion_tasks.video.codecs import subtitle_plan
from facefusion_tasks.video.ffbin import parse_encoders, parse_hwaccels, parse_version
from facefusion_tasks.video.packets import read_packets
from facefusion_tasks.video.stitch import stitch_argv
from facefusion_tasks.video.writer import last_frame_length


def option(argv: list[str], flag: str) -> str:
    """The value following a flag (which must appear exactly once)."""
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def test_decode_emits_every_frame_upright_with_its_pts_on_stderr() -> None:
    argv = decode_argv("/videos/in.mp4", ffmpeg="/usr/bin/ffmpeg")
    assert argv[0] == "/usr/bin/ffmpeg"
    assert option(argv, "-i") == "/videos/in.mp4"
    assert option(argv, "-map") == "0:v:0"
    assert option(argv, "-fps_mode") == "passthrough"
    assert option(argv, "-vf") == "showinfo=checksum=0"
    assert option(argv, "-f") == "rawvideo"
    assert option(argv, "-pix_fmt") == "bgr24"
    assert option(argv, "-loglevel") == "level+info"
    assert {"-nostats", "-hide_banner", "-nostdin", "-copyts"} <= set(argv)
    assert argv[-1] == "pipe:1"
    # Autorotation stays on; nothing seeks, limits or accelerates by default.
    for absent in ("-noautorotate", "-autorotate", "-ss", "-t", "-hwaccel", "-frames:v"):
        assert absent not in argv


def test_decode_seeks_before_the_input_by_absolute_timestamp_and_keeps_the_keyframe() -> None:
    argv = decode_argv("in.mp4", seek_seconds=12.345678901)
    before_input = argv[: argv.index("-i")]
    assert option(before_input, "-ss") == "12.345679"
    assert option(before_input, "-seek_timestamp") == "1"
    # A flag, not "-accurate_seek 0": a value there would be read as an output file name.
    assert "-noaccurate_seek" in before_input


@pytest.mark.parametrize("hwaccel", ["cuda", "auto"])
def test_decode_hwaccel_is_an_input_option(hwaccel: str) -> None:
    argv = decode_argv("in.mp4", hwaccel=hwaccel)
    assert option(argv[: argv.index("-i")], "-hwaccel") == hwaccel


def test_decode_limits() -> None:
    argv = decode_argv("in.mp4", duration_seconds=2.5, max_frames=10)
    assert option(argv[: argv.index("-i")], "-t") == "2.500000"
    assert option(argv[argv.index("-i") :], "-frames:v") == "10"


def test_decode_uses_vsync_before_ffmpeg_5_1() -> None:
    argv = decode_argv("in.mp4", version=(4, 4))
    assert option(argv, "-vsync") == "passthrough"
    assert "-fps_mode" not in argv


def test_decode_rejects_unknown_hwaccel() -> None:
    with pytest.raises(ValueError, match="hwaccel"):
        decode_argv("in.mp4", hwaccel="vdpau")


def test_encode_reads_matroska_from_stdin_and_keeps_source_ticks() -> None:
    argv = encode_argv(
        "/out/.clip.1234.partial.mp4", width=320, height=240, time_base=Fraction(1, 12800)
    )
    assert argv[:2] == ["ffmpeg", "-loglevel"]
    first_input = argv.index("-i")
    assert argv[first_input - 2 : first_input + 2] == ["-f", "matroska", "-i", "pipe:0"]
    assert option(argv, "-map") == "0:v:0"
    assert option(argv, "-c:v") == "libx264"
    assert option(argv, "-crf") == "18"
    assert option(argv, "-preset") == "veryfast"
    assert option(argv, "-pix_fmt") == "yuv420p"
    assert option(argv, "-fps_mode") == "passthrough"
    assert option(argv, "-enc_time_base:v") == "1/12800"
    assert option(argv, "-video_track_timescale") == "12800"
    assert option(argv, "-movflags") == "+faststart"
    assert "-y" in argv
    # The muxer is explicit and right before the (temp) file name.
    assert argv[-3:] == ["-f", "mp4", "/out/.clip.1234.partial.mp4"]
    assert "-shortest" not in argv and "-c:a" not in argv


def test_the_rate_is_said_outright_only_where_an_old_ffmpeg_would_misjudge_it() -> None:
    def encoded(rate: Fraction, version: tuple[int, int]) -> list[str]:
        return encode_argv("o.mp4", width=64, height=48, time_base=Fraction(1, 16000),
                           frame_rate=rate, version=version)  # fmt: skip

    # ffmpeg 5.1's Matroska demuxer takes a rate from the pipe only strictly between 5 and 1000 fps;
    # the rate is one over the last frame's length (a GIF's long last delay is a slow one).
    assert option(encoded(Fraction(1000), (5, 1)), "-r:v") == "1000/1"
    assert option(encoded(Fraction(2400), (5, 1)), "-r:v") == "2400/1"
    assert option(encoded(Fraction(1, 10), (5, 1)), "-r:v") == "1/10"
    assert option(encoded(Fraction(25, 12), (5, 1)), "-r:v") == "25/12"
    assert option(encoded(Fraction(5), (5, 1)), "-r:v") == "5/1"  # measured: 5 is outside
    assert "-r:v" not in encoded(Fraction(6), (5, 1))
    assert "-r:v" not in encoded(Fraction(25, 12), (6, 0))
    # 4.x says "-vsync 0 and -r can produce invalid output files" on its error level.
    assert "-r:v" not in encoded(Fraction(1000), (4, 4))
    assert "-r:v" not in encoded(Fraction(30000, 1001), (5, 1))
    assert "-r:v" not in encoded(Fraction(999), (5, 1))
    # Later ones keep the last frame by themselves, and 7.1 refuses -r beside passthrough.
    assert "-r:v" not in encoded(Fraction(1000), (7, 1))
    assert "-r:v" not in encode_argv("o.mp4", width=64, height=48, time_base=Fraction(1, 25))


def test_encode_keeps_odd_sizes_with_full_chroma() -> None:
    for width, height in [(321, 240), (320, 241), (321, 241)]:
        argv = encode_argv("o.mp4", width=width, height=height, time_base=Fraction(1, 25))
        assert option(argv, "-pix_fmt") == "yuv444p"
        # The one filter converts to YUV and gives no size: nothing is scaled, padded or cut.
        assert option(argv, "-vf") == "scale=flags=area+accurate_rnd"
        assert not any(a.startswith(("pad", "crop")) for a in argv)
    assert pix_fmt_for(2, 2) == "yuv420p"


def test_encode_time_base_with_a_numerator() -> None:
    argv = encode_argv("o.mov", width=64, height=64, time_base=Fraction(1001, 30000))
    assert option(argv, "-enc_time_base:v") == "1001/30000"
    assert option(argv, "-video_track_timescale") == "30000"
    assert argv[-3:-1] == ["-f", "mov"]


def test_encode_matroska_has_no_mov_options() -> None:
    argv = encode_argv("o.mkv", width=64, height=64, time_base=Fraction(1, 1000))
    assert "-video_track_timescale" not in argv and "-movflags" not in argv
    assert argv[-3:-1] == ["-f", "matroska"]


def test_encode_explicit_muxer_wins_over_the_file_name() -> None:
    argv = encode_argv("o.tmp", width=64, height=64, time_base=Fraction(1, 25), muxer="mp4")
    assert argv[-3:] == ["-f", "mp4", "o.tmp"]


def test_encode_adds_source_audio_copied_when_it_fits_and_cut_to_the_video() -> None:
    argv = encode_argv(
        "o.mp4", width=64, height=64, time_base=Fraction(1, 25),
        audio_source="/videos/in.mp4", audio_codecs=("aac",), audio_seconds=4.5,
    )  # fmt: skip
    inputs = [argv[i + 1] for i, a in enumerate(argv) if a == "-i"]
    assert inputs == ["pipe:0", "/videos/in.mp4"]
    maps = [argv[i + 1] for i, a in enumerate(argv) if a == "-map"]
    assert maps == ["0:v:0", "1:a?"]  # every audio stream
    assert option(argv, "-c:a") == "copy"
    # The audio input is limited to the video's length; -shortest could drop video frames.
    assert "-shortest" not in argv
    audio_input = argv.index("/videos/in.mp4")
    assert argv[audio_input - 3 : audio_input] == ["-t", "4.500000", "-i"]


def test_an_flv_source_is_read_from_its_start_and_its_sound_trimmed_by_a_filter() -> None:
    # ffmpeg's FLV seek lands on the second keyframe for any time in the first GOP.
    def encoded(container: str, muxer: str = "mp4") -> list[str]:
        return encode_argv(f"o.{muxer}", width=64, height=64, time_base=Fraction(1, 25),
                           audio_source="/v/in", audio_codecs=("aac", "mp3"), audio_seconds=4.5,
                           audio_skip=0.021, audio_container=container, muxer=muxer)  # fmt: skip

    audio_input = encoded("flv").index("/v/in")
    assert encoded("flv")[audio_input - 3 : audio_input] == ["-t", "4.521000", "-i"]
    assert "-ss" not in encoded("flv")
    assert option(encoded("flv"), "-c:a") == "aac"  # every stream: a filter cannot copy
    # Shifted by the trim: sound that starts after the picture keeps its offset; it ends with
    # the picture.
    shifted = "atrim=start=0.021000,asetpts=PTS-0.021000/TB,atrim=end=4.500000"
    assert option(encoded("flv"), "-af") == shifted
    webm = option(encoded("flv", "webm"), "-af")
    assert webm.startswith(shifted + ",aformat=channel_layouts=")
    # Elsewhere the input seek drops what comes before the picture, and AAC is copied.
    audio_input = encoded("mov,mp4,m4a,3gp,3g2,mj2").index("/v/in")
    window = encoded("mov,mp4,m4a,3gp,3g2,mj2")[audio_input - 5 : audio_input]
    assert window == ["-ss", "0.021000", "-t", "4.500000", "-i"]
    assert option(encoded("mov,mp4,m4a,3gp,3g2,mj2"), "-c:a") == "copy"

    # Subtitles cannot be filtered: read from the start, they would show 21 ms late.
    def subtitled(container: str) -> list[str]:
        return encode_argv("o.mkv", width=64, height=64, time_base=Fraction(1, 25),
                           audio_source="/v/in", audio_codecs=("aac",), audio_skip=0.021,
                           audio_container=container, subtitle_codecs=("subrip",))  # fmt: skip

    assert "1:s:0" not in subtitled("flv") and "1:s:0" in subtitled("matroska,webm")
    # With no delay there is nothing to trim, and FLV is read like any other.
    assert extras_window(0.0, 2.0, "flv") == {"t": "2.000000"}
    assert extras_trim(0.0, "flv") == 0.0


@pytest.mark.parametrize(
    ("muxer", "codec", "expected"),
    [
        ("mp4", "aac", "copy"),
        ("mp4", "pcm_s16le", "aac"),
        ("mp4", "vorbis", "aac"),
        ("mov", "pcm_s16le", "copy"),
        ("matroska", "pcm_s16le", "copy"),
        ("matroska", "vorbis", "copy"),
        ("matroska", "opus", "copy"),
        ("webm", "aac", "libopus"),
        ("webm", "opus", "copy"),
        ("webm", "vorbis", "copy"),
        ("webm", "pcm_s16le", "libopus"),
        # mp4 could hold Opus, but many players cannot play it there: AAC plays everywhere.
        ("mp4", "opus", "aac"),
        ("mov", "opus", "aac"),
        ("mov", "vorbis", "aac"),
        ("mp4", None, "aac"),
    ],
)
def test_audio_codec_choice(muxer: str, codec: str | None, expected: str) -> None:
    assert option(audio_codec_args(muxer, [codec]), "-c:a") == expected


def test_every_audio_stream_is_kept_each_copied_or_transcoded_as_it_fits() -> None:
    # Two tracks the container takes: one copy for all (into Matroska without the packets an
    # mp4 edit list hides, which it would play ahead of the picture).
    assert audio_codec_args("mp4", ["aac", "aac"]) == ["-c:a", "copy"]
    copied = audio_codec_args("matroska", ["aac", "opus"])
    assert option(copied, "-c:a") == "copy" and option(copied, "-bsf:a").startswith("noise=drop=")
    # None fits: one transcode for all.
    assert option(audio_codec_args("webm", ["aac", "pcm_s16le"]), "-c:a") == "libopus"
    # Some fit: per stream, so the one that fits is not re-encoded.
    mixed = audio_codec_args("webm", ["opus", "aac"])
    assert option(mixed, "-c:a:0") == "copy" and option(mixed, "-c:a:1") == "libopus"
    assert option(mixed, "-b:a:1") == "192k" and option(mixed, "-filter:a:1").startswith("aformat=")
    assert "-af" not in mixed and "-c:a" not in mixed  # nothing applies to the copied stream
    assert option(mixed, "-bsf:a:0").startswith("noise=drop=") and "-bsf:a:1" not in mixed
    # ffmpeg 5.1 drops AAC's priming packet too (it would shift the file); 6+ keep it, as
    # their Matroska muxer writes its codec delay.
    assert "lte(pts+duration" in option(copied, "-bsf:a")
    later = audio_codec_args("matroska", ["aac"], version=(9, 0))
    assert "*lt(pts+duration" in option(later, "-bsf:a")
    argv = encode_argv(
        "o.mkv", width=64, height=64, time_base=Fraction(1, 25), audio_source="/in/t.mkv",
        audio_codecs=("aac", "opus"), audio_seconds=2.0,
    )  # fmt: skip
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-map"] == ["0:v:0", "1:a?"]


def test_encoder_quality_flags() -> None:
    def build(encoder: str, preset: str = "veryfast") -> list[str]:
        return encode_argv(
            "o.mp4", width=64, height=64, time_base=Fraction(1, 25),
            encoder=encoder, preset=preset, quality=23,
        )  # fmt: skip

    x265 = build("libx265", "slow")
    assert option(x265, "-c:v") == "libx265" and option(x265, "-crf") == "23"
    assert option(x265, "-preset") == "slow"
    for encoder in ("h264_nvenc", "hevc_nvenc"):
        nvenc = build(encoder)
        assert option(nvenc, "-c:v") == encoder
        assert option(nvenc, "-cq") == "23" and "-crf" not in nvenc
        assert option(nvenc, "-preset") == "p2"
        assert option(nvenc, "-b:v") == "0"
    assert option(build("h264_nvenc", "ultrafast"), "-preset") == "p1"
    assert option(build("h264_nvenc", "veryslow"), "-preset") == "p7"
    with pytest.raises(ValueError, match="encoder"):
        build("mpeg4")


def test_muxer_for_extensions() -> None:
    assert muxer_for("a/b.MP4") == "mp4"
    assert muxer_for("b.m4v") == "mp4"
    assert muxer_for("b.mov") == "mov"
    assert muxer_for("b.mkv") == "matroska"
    assert muxer_for("b.WebM") == "webm"
    for bad in ("b.avi", "b.gif", "b"):
        with pytest.raises(ValueError, match="unsupported output container"):
            muxer_for(bad)


def test_parse_ffmpeg_capabilities() -> None:
    encoders_text = """Encoders:
 V..... = Video
 A..... = Audio
 ------
 V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10 (codec h264)
 V....D h264_nvenc           NVIDIA NVENC H.264 encoder (codec h264)
 A....D aac                  AAC (Advanced Audio Coding)
"""
    assert parse_encoders(encoders_text) == {"libx264", "h264_nvenc", "aac"}
    hwaccels_text = "Hardware acceleration methods:\nvdpau\ncuda\n\n"
    assert parse_hwaccels(hwaccels_text) == {"vdpau", "cuda"}
    assert parse_version("ffmpeg version 5.1.9-0+deb12u1 Copyright") == (5, 1)
    assert parse_version("ffmpeg version n9.0.2-17-g2a571b6068-20260930") == (9, 0)
    assert parse_version("ffmpeg version N-118000-gabcdef Copyright") == (99, 0)
    assert parse_version("not ffmpeg") is None


def test_opus_transcode_remixes_layouts_libopus_refuses() -> None:
    argv = audio_codec_args("webm", ["aac"])
    assert option(argv, "-c:a") == "libopus"
    # 2.1 or 4.0 audio would make libopus fail to open: aformat remixes it to one it takes.
    assert option(argv, "-af") == "aformat=channel_layouts=mono|stereo|3.0|quad|5.0|5.1|6.1|7.1"
    assert "-af" not in audio_codec_args("mp4", ["opus"])
    assert "-af" not in audio_codec_args("webm", ["opus"])


def test_vp9_and_av1_quality_and_speed_flags() -> None:
    def build(encoder: str, preset: str = "veryfast") -> list[str]:
        return encode_argv(
            "o.webm", width=64, height=64, time_base=Fraction(1, 1000),
            encoder=encoder, preset=preset, quality=30,
        )  # fmt: skip

    vp9 = build("libvpx-vp9", "ultrafast")
    assert option(vp9, "-c:v") == "libvpx-vp9" and option(vp9, "-crf") == "30"
    # Constant quality: -b:v 0, or libvpx reads crf as a floor under a default bitrate.
    assert option(vp9, "-b:v") == "0" and option(vp9, "-row-mt") == "1"
    assert (option(vp9, "-deadline"), option(vp9, "-cpu-used")) == ("realtime", "8")
    assert (option(build("libvpx-vp9", "slow"), "-deadline")) == "good"
    svt = build("libsvtav1")
    assert option(svt, "-c:v") == "libsvtav1" and option(svt, "-crf") == "30"
    assert (
        option(svt, "-preset") == "11"
        and option(build("libsvtav1", "ultrafast"), "-preset") == "12"
    )
    aom = build("libaom-av1", "ultrafast")
    assert (option(aom, "-usage"), option(aom, "-cpu-used")) == ("realtime", "8")
    assert option(aom, "-b:v") == "0"
    nvenc = build("av1_nvenc")
    assert option(nvenc, "-cq") == "30" and option(nvenc, "-preset") == "p2"
    # WebM is Matroska: no mp4 track options, and the muxer is named.
    assert "-movflags" not in vp9 and "-video_track_timescale" not in vp9
    assert vp9[-3:-1] == ["-f", "webm"]
    with pytest.raises(ValueError, match="unknown preset 'p4'"):
        build("libvpx-vp9", "p4")


def test_stitching_into_webm_copies_the_video_and_transcodes_aac_to_opus() -> None:
    argv = stitch_argv(
        Path("/work/j/concat.ffconcat"), Path("/out/.o.partial.webm"), time_base=Fraction(1, 1000),
        muxer="webm", audio_source=Path("/in/t.mp4"), audio_codecs=("aac",), audio_seconds=2.0,
    )  # fmt: skip
    assert option(argv, "-c:v") == "copy"
    assert option(argv, "-c:a") == "libopus"
    assert argv[-3:] == ["-f", "webm", "/out/.o.partial.webm"]
    assert "-movflags" not in argv


def test_subtitles_are_carried_where_the_container_can_hold_them() -> None:
    # Matroska holds text and bitmap (PGS) subtitles as they are, but not mov_text (SubRip then);
    # closed captions nowhere.
    assert subtitle_plan("matroska", ["subrip", "hdmv_pgs_subtitle", "mov_text", "eia_608"]) == [
        (0, "copy"),
        (1, "copy"),
        (2, "srt"),
    ]
    # mp4 and mov hold mov_text, WebM WebVTT: text converts, bitmap cannot and is left out.
    # mov_text itself is re-encoded, not copied: see test_containers' cues in sync.
    assert subtitle_plan("mp4", ["subrip", "hdmv_pgs_subtitle", "mov_text"]) == [
        (0, "mov_text"),
        (2, "mov_text"),
    ]
    assert subtitle_plan("webm", ["ass", "webvtt", "dvd_subtitle"]) == [(0, "webvtt"), (1, "copy")]
    assert subtitle_args("mp4", ["hdmv_pgs_subtitle", "subrip"]) == [
        "-map", "1:s:1", "-c:s:0", "mov_text",
    ]  # fmt: skip
    argv = stitch_argv(
        Path("list.ffconcat"), Path("o.webm"), time_base=Fraction(1, 1000), muxer="webm",
        audio_source=Path("/in/t.mkv"), subtitle_codecs=("subrip",), audio_seconds=2.0,
    )  # fmt: skip
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-map"] == ["0:v:0", "1:a?", "1:s:0"]
    assert option(argv, "-c:s:0") == "webvtt" and "-c:a" not in argv  # no audio: no audio options


def test_the_last_frame_keeps_its_own_length_unless_that_would_declare_a_fast_video() -> None:
    # A GIF's long last delay, and a variable-rate video's last frame shorter than its
    # average step: both kept.
    assert last_frame_length(Fraction(12, 25), Fraction(49, 12)) == Fraction(12, 25)
    assert last_frame_length(Fraction(1, 25), Fraction(20, 3)) == Fraction(1, 25)
    # Unknown: one frame at the rate, as before.
    assert last_frame_length(Fraction(0), Fraction(25)) == Fraction(1, 25)
    assert last_frame_length(None, Fraction(25)) == Fraction(1, 25)
    assert last_frame_length(None, None) == 0
    # A 30 fps video whose last packet says one 90 kHz tick would tell the encoder 90000 fps.
    assert last_frame_length(Fraction(1, 90000), Fraction(30)) == Fraction(1, 30)
    # Faster than 240 fps only as fast as the source itself runs.
    assert last_frame_length(Fraction(1, 1000), Fraction(1000)) == Fraction(1, 1000)
    assert last_frame_length(Fraction(1, 2000), Fraction(1000)) == Fraction(1, 1000)
    assert last_frame_length(Fraction(1, 240), Fraction(30)) == Fraction(1, 240)
    # A GIF held on its last frame for GIF's longest delay: ffmpeg 5.1's SVT-AV1 refused the
    # 1/655.35 fps that length would declare.
    assert last_frame_length(Fraction(65535, 100), Fraction(10)) == 255


def test_packets_in_a_framecrc_listing() -> None:
    listing = "\n".join([
        "#tb 0: 1/100",
        "#media_type 0: video",
        "0,          0,          0,       12,    25883, 0xc183a0ec",
        "0,        140,        140,       48,    30708, 0xfc8a53ce, F=0x0",
        "0,         92,         92,       48,    31296, 0xac4c58e0, F=0x0",
        "0,        150,        150,        5,    31296, 0xac4c58e0, F=0x4",  # dropped
        "1,        200,        200,       99,      100, 0x00000000",  # another stream
    ])  # fmt: skip
    packets = read_packets(listing)
    assert packets.pts == [0, 140, 92] and packets.time_base == Fraction(1, 100)
    assert packets.last_frame() == Fraction(48, 100)
    assert packets.length(Fraction(25)) == pytest.approx(1.88)
    assert read_packets("#tb 0: 1/100\n").last_frame() == 0


def test_transcoded_sound_ends_with_the_picture_and_ts_sound_keeps_its_start() -> None:
    # The input's -t, once decoded, counts from the stream's own first sample: sound starting
    # 1.3 s after the picture ran 1.3 s past its end. And the ffmpeg CLI moved an MPEG-TS/PS
    # input's start to its earliest *used* stream: later sound came out 0.79 s early.
    def encoded(container: str, codec: str = "pcm_s16le") -> list[str]:
        return encode_argv("o.mp4", width=64, height=64, time_base=Fraction(1, 25),
                           audio_source="/v/in", audio_codecs=(codec,), audio_seconds=4.0,
                           audio_container=container)  # fmt: skip

    assert option(encoded("mov,mp4,m4a,3gp,3g2,mj2"), "-af") == "atrim=end=4.000000"
    assert "-af" not in encoded("mov,mp4,m4a,3gp,3g2,mj2", "aac")  # copied: cut on its clock
    for container in ("mpegts", "mpeg"):
        argv = encoded(container, "aac")
        options = argv[argv.index("pipe:0") + 1 : argv.index("/v/in")]  # the audio input's
        pairs = set(zip(options, options[1:], strict=False))
        assert {("-itsoffset", "0.000001"), ("-discard:v", "none"), ("-t", "4.000000")} <= pairs
    assert "-itsoffset" not in encoded("matroska,webm")


def test_the_stitch_gives_the_last_frame_its_length_in_the_output_tracks_own_ticks() -> None:
    # ffmpeg 5.1 reads no packet durations from the mp4 segments and guessed the last one from
    # the first segment's rate: a clip opening at 10 fps got a 0.1 s last frame.
    def bsf(muxer: str, last: Fraction, version: tuple[int, int] = (5, 1)) -> str | None:
        argv = stitch_argv(Path("l.ffconcat"), Path(f"o.{muxer}"), time_base=Fraction(1, 90000),
                           muxer=muxer, last_frame=last, version=version)  # fmt: skip
        return option(argv, "-bsf:v") if "-bsf:v" in argv else None

    assert bsf("mp4", Fraction(841, 18000)) == "setts=pts=PTS:dts=DTS:duration=4205"
    assert bsf("mov", Fraction(9, 10)) == "setts=pts=PTS:dts=DTS:duration=81000"
    assert bsf("matroska", Fraction(841, 18000)) == "setts=pts=PTS:dts=DTS:duration=47"
    assert bsf("webm", Fraction(9, 10)) == "setts=pts=PTS:dts=DTS:duration=900"
    assert bsf("mp4", Fraction(0)) is None  # unknown: the copy's own
    # From 6.0 the copy keeps the last segment's own (its filter would tick in the segments'
    # time base, not the muxer's).
    assert bsf("matroska", Fraction(9, 10), (9, 0)) is None
