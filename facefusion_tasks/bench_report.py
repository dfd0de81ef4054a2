"""The bench report as Markdown tables for the README, followed by the JSON they came from."""

from __future__ import annotations

import json
from typing import Any


def _fps(s: dict[str, float]) -> str:
    return f"{s['median']:.1f} (min {s['min']:.1f})"


def _ratio(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f} (min {s['min']:.3f}; rounds {', '.join(f'{v:.3f}' for v in s['rounds'])})"


def _ms(table: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.2f}" for k, v in table.items())


def render(report: dict[str, Any]) -> str:
    """Markdown tables, ready for the README, then the JSON they came from."""
    head = [
        ("machine", report["machine"]),
        ("models", report["models"]),
        ("provider / precision / IO binding / paste",
         f"{report['provider']} / {report['precision']} / {report['io_binding']} / "
         f"{report.get('paste', 'cpu')}"),
        ("CPU pool threads / inference threads (0 = onnxruntime's default)",
         f"{report['cpu_threads']} / {report['inference_threads']}"),
        ("batch size / detector batched / swapper batched",
         f"{report['batch_size']} / {report['detector_batched']} / {report['swapper_batched']}"),
        ("rounds", f"{report['repeats']} interleaved; median (min) over rounds"),
    ]  # fmt: skip
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in head]
    if report["mode"] == "ceiling":
        lines += [
            "",
            "| case | frames | transcode-only fps | ceiling fps | ceiling ÷ transcode fps "
            "(same round) | CPU per frame, transcode ÷ ceiling (same round) |",
            "|---|---:|---:|---:|---|---|",
        ]
        for name, case in report["cases"].items():
            lines.append(
                f"| {name} | {case['frames']} | {_fps(case['transcode_fps'])} | "
                f"{_fps(case['ceiling_fps'])} | {_ratio(case['ratio'])} | "
                f"{_ratio(case['cpu_ratio'])} |"
            )
        if any("paste_gain" in case for case in report["cases"].values()):
            lines += [
                "",
                "| case | ceiling fps, OpenCV paste | its ÷ transcode fps | paste graph's gain, "
                "ceiling fps ÷ OpenCV paste's (same round) |",
                "|---|---:|---|---|",
            ]
            for name, case in report["cases"].items():
                lines.append(
                    f"| {name} | {_fps(case['cpu_paste_fps'])} | "
                    f"{_ratio(case['cpu_paste_ratio'])} | {_ratio(case['paste_gain'])} |"
                )
        lines += ["", "CPU ms per frame (median over rounds), ceiling runs:", ""]
        stages = sorted({k for c in report["cases"].values() for k in c["cpu_per_frame"]})
        lines.append("| stage | " + " | ".join(report["cases"]) + " |")
        lines.append("|---|" + "---:|" * len(report["cases"]))
        for stage in stages:
            cells = [
                f"{c['cpu_per_frame'].get(stage, 0.0) * 1000:.2f}" for c in report["cases"].values()
            ]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        # ffmpeg's own share of transcode-only beside the ceiling's: the encoder's extra work
        # on the swapped pictures shows there, apart from the pipeline's glue.
        for key, label in (("ffmpeg processes", "ffmpeg processes, transcode-only"),
                           ("total", "total, transcode-only")):  # fmt: skip
            cells = [
                f"{c['transcode_cpu_per_frame'].get(key, 0.0) * 1000:.2f}"
                for c in report["cases"].values()
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    else:
        clip = report["clip"]
        fps = report["fps"]
        rows = [
            ("clip", f"{clip['seconds']:g} s, {clip['width']}x{clip['height']}, {clip['faces']} faces, {clip['frames']} frames"),
            ("end-to-end fps", _fps(fps["end_to_end"])),
            ("transcode-only fps", _fps(fps["transcode"])),
            ("inference-only fps", _fps(fps["inference"])),
            ("end-to-end ÷ (transcode + inference), same round", _ratio(report["ratio"])),
            ("CPU ms per frame (e2e)", _ms(report["cpu_per_frame"])),
            ("peak RSS (bench process)", f"{report['peak_rss_bytes'] / 2**20:.0f} MiB"),
        ]  # fmt: skip
        if "processes" in report:
            p = report["processes"]
            n = p["count"]
            rows.append(
                (
                    f"{n} processes vs 1, aggregate fps",
                    f"{_fps(p[f'fps_{n}'])} vs {_fps(p['fps_1'])}; speed-up {_ratio(p['speedup'])}",
                )
            )
        if "memory" in report:
            for name, run in report["memory"]["runs"].items():
                batch = run["detector_batch"] or "auto"
                rows.append((f"peak RSS (max over rounds), {name} ({run['gflops']:g} GFLOPs, detector batch {batch})",
                             f"{run['peak_rss_bytes'] / 2**20:.0f} MiB at {_fps(run['fps'])} fps"))  # fmt: skip
            rows.append(("heavy detector fps, as set ÷ batched (same round)",
                         _ratio(report["memory"]["heavy_fps_vs_batched"])))  # fmt: skip
        if "growth" in report:
            g = report["growth"]
            rows.append(("peak RSS, 1 min vs 6 min (320x240)",
                         f"{g['1min']['peak_rss_bytes'] / 2**20:.0f} MiB vs {g['6min']['peak_rss_bytes'] / 2**20:.0f} MiB "
                         f"(growth {g['growth_bytes'] / 2**20:+.1f} MiB)"))  # fmt: skip
        lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n\n" + json.dumps(report, sort_keys=True)
