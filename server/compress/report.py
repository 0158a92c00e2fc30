"""The compression report: `report.json` (machine), `report.md` (people), `report.png`
(size, latency and quality per level side by side, as bars)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fleetcast.server.compress.pipeline import CompressionReport, LevelResult

logger = logging.getLogger(__name__)


def write_reports(report: CompressionReport, directory: Path) -> None:
    document = report.to_json()
    for level in document["levels"]:
        level["path"] = Path(level["path"]).name if level["path"] else None  # relative to the report
    document["original"]["path"] = report.original.path.name if report.original.path else None
    write_text(directory / "report.json", json.dumps(document, indent=2, sort_keys=False) + "\n")
    write_text(directory / "report.md", render_markdown(report))
    plot(report, directory / "report.png")


def write_text(path: Path, text: str) -> None:
    from fleetcast.server.compress.pipeline import write_file

    write_file(path, text.encode())


def kib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024:,.1f} KiB"


def ratio(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def quality_text(result: LevelResult) -> str:
    if result.metric and result.metric.startswith("metric:"):
        return f"{result.metric[7:]} {score_of(result):.3f}"
    if result.metric == "accuracy":
        return f"top-1 {result.accuracy_pct:.2f} %"
    if result.metric == "agreement":
        return f"agreement {result.agreement_pct:.2f} %"
    if result.metric == "cosine":
        return f"cosine {result.cosine:.5f}, SNR {result.snr_db:.1f} dB"
    if result.metric == "step_agreement":
        return f"time steps agree {score_of(result):.2f} %"
    if result.metric in ("sequence_agreement", "mask_iou"):
        name = "sequences agree" if result.metric == "sequence_agreement" else "mask IoU"
        return f"{name} {score_of(result):.2f} %"
    return "-"


def outputs_lines(report: CompressionReport) -> list[str]:
    """Every output's figures per level (fidelity.py's table says which figure each kind gets)."""
    rows = []
    for result in [report.original, *report.levels]:
        for output in result.outputs if not result.error else ():
            rows.append(f"| {result.level} | {output['name']} | {output['kind']} | {output['figure_pct']:.3f} "
                        f"| {output['cosine']:.6f} | {output['snr_db']:.1f} |")
    if not rows:
        return []
    return ["", "## Outputs", "", "Per output, averaged over samples: the kind's figure (top-1 agreement, "
            "greedy-decoded sequence agreement, thresholded mask IoU, or 100 x cosine), cosine and SNR.", "",
            "| level | output | kind | figure (%) | cosine | SNR (dB) |", "|---|---|---|---|---|---|", *rows]


def render_markdown(report: CompressionReport) -> str:
    lines = [f"# Compression report: {Path(report.model).name}", "",
             f"Quality measured on {report.quality_data}; budget {report.budget_pp} percentage points. "
             f"Latency: median of one batch-1 inference on onnxruntime {report.machine.get('onnxruntime')} "
             f"CPU, ratios to the original measured in the same run.", "",
             "| level | file | size | packed | latency 1 thread | latency 2 threads | quality | drop (pp) |",
             "|---|---|---|---|---|---|---|---|"]
    for result in [report.original, *report.levels]:
        if result.error:
            lines.append(f"| {result.level} | not built | | | | | | |")
            continue
        lines.append(
            f"| {result.level} | {result.path.name if result.path else '-'} "
            f"| {kib(result.size_bytes)} ({ratio(result.size_ratio)}) "
            f"| {kib(result.packed_bytes)} ({ratio(result.packed_ratio, 3)}) "
            f"| {result.latency_ms_1t:.3f} ms ({ratio(result.latency_ratio)}) "
            f"| {result.latency_ms_2t:.3f} ms ({ratio(result.latency_ratio_2t)}) "
            f"| {quality_text(result)} | {result.drop_pp:+.2f} |")
    lines += outputs_lines(report)
    if report.recommendations:
        from fleetcast.server.compress.advice import describe as describe_advice

        lines += ["", "## Recommended level per hardware class", ""]
        lines += [f"- {line}" for line in describe_advice(report.recommendations)]
    missing = [r for r in report.levels if r.error]
    if missing:
        lines += ["", "## Levels not built", ""] + [f"- **{r.level}**: {r.error}" for r in missing]
    recipes = [r for r in report.levels if r.recipe and not r.error]
    if recipes:
        lines += ["", "## Recipes", ""]
        for result in recipes:
            summary = ", ".join(f"{k}={v}" for k, v in result.recipe.items() if k != "sensitivity_pp")
            lines.append(f"- **{result.level}**: {summary}")
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def plot(report: CompressionReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    built = [r for r in [report.original, *report.levels] if not r.error]
    names = [r.level for r in built]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    positions = range(len(built))
    axes[0].bar([p - 0.2 for p in positions], [r.size_ratio for r in built], 0.4, label="file")
    axes[0].bar([p + 0.2 for p in positions], [r.packed_ratio for r in built], 0.4, label="packed (zstd)")
    axes[0].set_title("size / original")
    axes[0].legend()
    axes[1].bar([p - 0.2 for p in positions], [r.latency_ratio for r in built], 0.4, label="1 thread")
    axes[1].bar([p + 0.2 for p in positions], [r.latency_ratio_2t for r in built], 0.4, label="2 threads")
    axes[1].set_title("latency / original")
    axes[1].legend()
    metric = built[0].metric or "score"
    axes[2].bar(list(positions), [score_of(r) for r in built], 0.6, color="tab:green")
    axes[2].set_title(f"{metric} (%)")
    low = min(score_of(r) for r in built)
    high = max(score_of(r) for r in built)
    axes[2].set_ylim(max(0.0, low - 5.0), max(100.5, high + 0.5))
    for axis in axes:
        axis.set_xticks(list(positions), names, rotation=30)
    figure.suptitle(f"{Path(report.model).name}: {report.quality_data}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def score_of(result: LevelResult) -> float:
    """The figure the budget was judged by (measure.Quality.score)."""
    return result.score or 0.0
