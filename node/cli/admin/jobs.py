"""``ainode jobs``: jobs and received series."""

from __future__ import annotations

import argparse
import json
from typing import Any

from node.cli.admin.common import actor, admin_service, format_time, guard, with_config


def jobs_list(args: argparse.Namespace) -> int:
    admin = admin_service(args)
    found = admin.catalog.search_jobs(
        state=args.state or "",
        rule=args.rule or "",
        plugin=args.plugin or "",
        text=args.text or "",
        limit=args.limit,
    )
    etas = admin.etas()
    for job, info in found:
        description = info.get("series_description") or job.series_uid[-20:]
        error = f"  {job.error[:80]}" if job.error else ""
        print(
            f"{job.id:6} {job.state:10} {job.rule:24} {job.plugin:12} {format_time(job.created_at)}"
            f"  {eta_text(job.id, job.state, etas):30}  {description}{error}"
        )
    return 0


def eta_text(job_id: int, state: str, etas: dict[int, Any]) -> str:
    """The ETA column: ``starts ~14:02, done ~14:03``; '-' for an ended job."""
    from node.orchestration.eta import describe

    if state not in ("queued", "running", "exporting"):
        return "-"
    eta = etas.get(job_id)
    if eta is None:
        return "eta unknown (no history)"
    return describe(eta.estimated_start, eta.estimated_finish, state)


def jobs_show(args: argparse.Namespace) -> int:
    from node.api.serialize import job_json

    admin = admin_service(args)
    job, events, info = admin.job(args.job_id)
    etas = admin.etas()
    if args.json:
        data = job_json(job, info, etas)
        data["events"] = [e.__dict__ for e in events]
        print(json.dumps(data, indent=2))
        return 0
    print(f"job {job.id}: {job.state}  rule={job.rule} plugin={job.plugin} priority={job.priority}")
    print(f"series {job.series_uid} ({info.get('series_description') or 'no description'})")
    if job.error:
        print(f"error: {job.error}")
    if job.state in ("queued", "running", "exporting"):
        eta = etas.get(job.id)
        print(f"eta: {eta_text(job.id, job.state, etas)}" + (f" ({eta.basis})" if eta else ""))
    for event in events:
        print(f"  {format_time(event.at)}  {event.event:24} {event.detail}")
    return 0


def jobs_retry(args: argparse.Namespace) -> int:
    job = admin_service(args).retry_job(args.job_id, actor())
    print(f"job {job.id} is {job.state} again")
    return 0


def series_complete(args: argparse.Namespace) -> int:
    service = admin_service(args)
    row = service.force_complete(args.series_uid, actor())
    jobs = [
        j for j in service.queue.jobs(series_uid=row.series_uid) if j.generation == row.generation
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "series_uid": row.series_uid,
                    "state": row.state,
                    "generation": row.generation,
                    "instances": row.instance_count,
                    "job_ids": [job.id for job in jobs],
                }
            )
        )
        return 0
    print(
        f"series {row.series_uid} complete: generation {row.generation},"
        f" {row.instance_count} instance(s), {len(jobs)} job(s) queued"
    )
    return 0


def series_rerun(args: argparse.Namespace) -> int:
    jobs = admin_service(args).rerun_series(args.series_uid, actor())
    if not jobs:
        print(f"series {args.series_uid}: no rule matches; no job queued")
    for job in jobs:
        print(f"job {job.id} queued rule={job.rule} plugin={job.plugin}")
    return 0


def _job_done(args: argparse.Namespace, job: Any, text: str) -> int:
    from node.api.serialize import job_json

    print(json.dumps(job_json(job)) if args.json else text)
    return 0


def jobs_cancel(args: argparse.Namespace) -> int:
    job = admin_service(args).cancel_job(args.job_id, actor())
    return _job_done(args, job, f"job {job.id} is {job.state}")


def jobs_rerun(args: argparse.Namespace) -> int:
    job = admin_service(args).rerun_job(args.job_id, actor(), args.plugin)
    return _job_done(
        args, job, f"job {job.id} queued ({job.plugin}) for job {args.job_id}'s series"
    )


def jobs_priority(args: argparse.Namespace) -> int:
    job = admin_service(args).set_job_priority(args.job_id, args.priority, actor())
    return _job_done(args, job, f"job {job.id} has priority {job.priority}")


def jobs_shadow(args: argparse.Namespace) -> int:
    from node.admin.shadow import shadow_predictions

    listing = shadow_predictions(
        admin_service(args).queue,
        rule=args.rule or "",
        plugin=args.plugin or "",
        series_uid=args.series or "",
        state=args.state,
    )
    print(json.dumps(listing, indent=2))
    return 0


def add_commands(commands: Any) -> None:
    """Register ``ainode jobs`` (jobs and received series)."""
    jobs = commands.add_parser("jobs", help="list, show and retry jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = with_config(jobs_sub.add_parser("list", help="jobs, newest first"))
    listing.add_argument("--state")
    listing.add_argument("--rule")
    listing.add_argument("--plugin")
    listing.add_argument("--text")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=guard(jobs_list))
    show = with_config(jobs_sub.add_parser("show", help="a job and its timeline"))
    show.add_argument("job_id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=guard(jobs_show))
    retry = with_config(jobs_sub.add_parser("retry", help="run a failed job again"))
    retry.add_argument("job_id", type=int)
    retry.set_defaults(handler=guard(jobs_retry))
    for verb, handler, text in (
        ("cancel", jobs_cancel, "cancel a queued or running job"),
        ("rerun", jobs_rerun, "queue a new job for the same series"),
        ("priority", jobs_priority, "change a queued job's priority"),
    ):
        action = with_config(jobs_sub.add_parser(verb, help=text))
        action.add_argument("job_id", type=int)
        if verb == "rerun":
            action.add_argument("--plugin", help="run this plugin instead of the job's")
        if verb == "priority":
            action.add_argument("priority", type=int)
        action.add_argument("--json", action="store_true")
        action.set_defaults(handler=guard(handler))
    shadow = with_config(
        jobs_sub.add_parser("shadow", help="shadow jobs' predictions per series (JSON)")
    )
    shadow.add_argument("--rule")
    shadow.add_argument("--plugin")
    shadow.add_argument("--series", help="SeriesInstanceUID")
    shadow.add_argument("--state", default="done", help="job state; '' for every shadow job")
    shadow.set_defaults(handler=guard(jobs_shadow))

    series = commands.add_parser("series", help="act on received series")
    series_sub = series.add_subparsers(dest="series_command", required=True)
    rerun = with_config(
        series_sub.add_parser(
            "rerun", help="route a complete series again (a new job per matching rule)"
        )
    )
    rerun.add_argument("series_uid")
    rerun.set_defaults(handler=guard(series_rerun))
    complete = with_config(
        series_sub.add_parser("complete", help="complete a receiving series now and queue its jobs")
    )
    complete.add_argument("series_uid")
    complete.add_argument("--json", action="store_true")
    complete.set_defaults(handler=guard(series_complete))
