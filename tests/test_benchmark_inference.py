"""The inference benchmark's report: per-stage medians, speed-up line and plot."""

from __future__ import annotations

from pathlib import Path

from benchmarks.inference import inference_table, median_stages, plot


def _result() -> dict:  # type: ignore[type-arg]
    def entry(load: float, windows: float, total: float) -> dict:  # type: ignore[type-arg]
        stages = {"load": load, "sliding_window": windows, "to_source": total - load - windows}
        return {"load_s": load, "infer_s": total - load, "total_s": total, "stages_s": stages}

    runs = [
        {"node": entry(2.0, 3.0, 10.0), "reference": entry(4.0, 3.0, 30.0)},
        {"node": entry(4.0, 5.0, 20.0), "reference": entry(6.0, 5.0, 40.0)},
    ]
    for run in runs:
        run["ratio_node_over_reference"] = run["node"]["total_s"] / run["reference"]["total_s"]
        run["speedup"] = run["reference"]["total_s"] / run["node"]["total_s"]
    dice = {"body": 0.999, "liver": 0.995}
    return {
        "shape": [30, 64, 64],
        "device": "cuda:0",
        "device_name": "NVIDIA H200",
        "threads": 2,
        "runs": runs,
        "agreement_dice": dice,
        "agreement_dice_engine": dice,
        "truth_dice": {"node": dice, "reference": dice},
    }


def test_table_reports_stage_medians_and_the_speed_up() -> None:
    result = _result()
    assert median_stages(result, "node") == {"load": 3.0, "sliding_window": 4.0, "to_source": 8.0}
    text = "\n".join(inference_table(result))
    assert "device cuda:0 (NVIDIA H200)" in text
    assert "node / reference time: 0.333 (node 3.00x as fast)" in text
    assert "node stages (median s): load 3.00, sliding_window 4.00, to_source 8.00" in text
    assert "node vs reference + the routine's clean-up, Dice: body 0.9990" in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "inference.png"
    plot(_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
