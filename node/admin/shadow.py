"""Shadow-mode results: listing a job's stored objects and the shadow predictions per series.

A rule with ``shadow: true`` runs its jobs and stores their results, but nothing
is sent (the queue finishes shadow jobs without exporting them). This module
lists what they produced, for the API (``/api/shadow/predictions``,
``/api/jobs/{id}/results``), the console and ``ainode jobs shadow``, in the JSON
format documented in ``node/admin/README.md`` so the evaluation report can
compare shadow predictions with reference labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.contract.kinds import file_tag, tag_kind
from node.errors import NotFound
from node.orchestration.summary import SUMMARY_NAME, read_summary
from node.state.jobs import Job, JobQueue

FORMAT = "ainode.shadow-predictions"
VERSION = 1


def result_objects(job: Job) -> list[dict[str, Any]]:
    """The DICOM result files a job stored: name, kind, tag, path, SOP Instance UID, size."""
    if job.result_dir is None or not job.result_dir.is_dir():
        return []
    objects = []
    for path in sorted(job.result_dir.glob("*.dcm")):
        tag = file_tag(path.name)
        uid = path.stem[len(tag) + 1 :] if tag is not None else None
        objects.append(
            {
                "name": path.name,
                "kind": tag_kind(tag).value if tag is not None else None,
                "tag": tag,
                "path": str(path),
                "sop_instance_uid": uid,
                "size": path.stat().st_size,
            }
        )
    return objects


def result_file(job: Job, name: str) -> Path:
    """One stored result file of ``job`` by its plain file name (no paths)."""
    if job.result_dir is None or "/" in name or "\\" in name or name.startswith("."):
        raise NotFound(f"job {job.id} has no result {name!r}")
    if not (name.endswith(".dcm") or name == SUMMARY_NAME):
        raise NotFound(f"job {job.id} has no result {name!r}")
    path = job.result_dir / name
    if not path.is_file():
        raise NotFound(f"job {job.id} has no result {name!r}")
    return path


def _first(objects: list[dict[str, Any]], kind: str) -> str | None:
    return next((o["path"] for o in objects if o["tag"] == kind), None)


def prediction_entry(job: Job) -> dict[str, Any]:
    """One job's stored prediction: its objects and its ``prediction.json`` content."""
    objects = result_objects(job)
    summary = read_summary(job.result_dir) if job.result_dir is not None else None
    summary = summary or {}
    return {
        "job_id": job.id,
        "rule": job.rule,
        "plugin": job.plugin,
        "plugin_version": summary.get("plugin_version"),
        "template": summary.get("template"),
        "state": job.state,
        "shadow": job.shadow,
        "generation": job.generation,
        "finished_at": job.finished_at,
        "would_send_to": list(job.destinations),
        "result_dir": str(job.result_dir) if job.result_dir else None,
        "seg": _first(objects, "seg"),
        "sr": _first(objects, "sr"),
        "objects": objects,
        "measurements": summary.get("measurements", {}),
        "findings": summary.get("findings", {}),
        "classifications": summary.get("classifications", []),
        "detections": summary.get("detections", []),
        "quality": summary.get("quality"),
    }


def shadow_predictions(
    queue: JobQueue,
    *,
    rule: str = "",
    plugin: str = "",
    series_uid: str = "",
    state: str = "done",
) -> dict[str, Any]:
    """Shadow jobs' predictions grouped per series (oldest first), filtered as asked.

    ``state`` ``done`` (default) lists the jobs that stored results; ``""`` lists
    every shadow job, e.g. to see the ones the quality gate skipped.
    """
    by_series: dict[str, dict[str, Any]] = {}
    for job in queue.jobs(series_uid=series_uid or None):
        if not job.shadow or (rule and job.rule != rule) or (plugin and job.plugin != plugin):
            continue
        if state and job.state != state:
            continue
        entry = by_series.setdefault(
            job.series_uid,
            {"series_uid": job.series_uid, "study_uid": job.study_uid, "predictions": []},
        )
        prediction = prediction_entry(job)
        if job.state != "done":
            prediction["error"] = job.error
        entry["predictions"].append(prediction)
    return {"format": FORMAT, "version": VERSION, "series": list(by_series.values())}


__all__ = ["prediction_entry", "result_file", "result_objects", "shadow_predictions"]
