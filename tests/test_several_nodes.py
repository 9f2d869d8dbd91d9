"""Two ingest node processes behind one AE title share one state and one spool (issue 15).

Each test starts two real ``ainode serve`` processes (``node-a``, ``node-b``) whose state is
one SQLite file or one PostgreSQL database (parametrised) and whose spool and results are
one directory (standing in for a shared filesystem mounted at the same path), and a real
Orthanc as their destination. dcmtk's storescu sends to either node.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pydicom
import pytest

from node.config import BUILT_IN_CHEST_RULE, BUILT_IN_FUNDUS_DEMO_RULE
from tests.support.dcmtk import storescu
from tests.support.net import wait_until
from tools.net import LOCALHOST
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.synthetic.chest_ct import make_chest_ct, write_series
from tools.synthetic.fundus import make_fundus

pytestmark = pytest.mark.slow

NODES = ("node-a", "node-b")
#: Leases: long enough that a live node on this loaded host renews them in time, short
#: enough that a killed node's jobs are taken over within seconds.
LEASE_SECONDS = 10.0
KILLED_LEASE_SECONDS = 4.0
FINISHED = ("done", "failed", "skipped", "cancelled")


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The shared state: one SQLite file both processes open, or one PostgreSQL database."""
    if request.param == "postgres":
        return cast(str, request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'shared' / 'state.sqlite3'}"


def state_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (no parameters) in the shared state."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :], timeout=30)) as db:
            return list(db.execute(sql))
    import psycopg

    with psycopg.connect(url) as db:
        return [tuple(row) for row in db.execute(sql).fetchall()]


def node_config(
    name: str,
    shared: Path,
    url: str,
    pacs: OrthancServer,
    quiet_seconds: float,
    lease_seconds: float = LEASE_SECONDS,
) -> dict[str, Any]:
    """``name`` sharing ``url``'s state and ``shared``'s spool and results; chest CTs go
    to ``pacs`` (SEG + SR), fundus photographs to ``pacs_sr`` (SR only; the same Orthanc)."""
    destination = {"ae_title": pacs.aet, "host": LOCALHOST, "port": pacs.dicom_port}
    return {
        "node": {
            "name": name,
            "spool_dir": str(shared / "spool"),
            "results_dir": str(shared / "results"),
        },
        "state": {"url": url},
        "workers": {"lease_seconds": lease_seconds, "cpu_threads": 1},
        "completion": {"series_quiet_seconds": quiet_seconds, "poll_seconds": 0.2},
        "destinations": {
            "pacs": {**destination, "results": ["seg", "sr"]},
            "pacs_sr": {**destination, "results": ["sr"]},
        },
        "rules": [
            {**BUILT_IN_CHEST_RULE, "send_to": ["pacs"]},
            {**BUILT_IN_FUNDUS_DEMO_RULE, "send_to": ["pacs_sr"], "priority": 5},
        ],
    }


@contextlib.contextmanager
def two_nodes(
    tmp_path: Path,
    url: str,
    pacs: OrthancServer,
    *,
    quiet_seconds: float = 1.5,
    lease_seconds: float = LEASE_SECONDS,
    env: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[dict[str, NodeProcess]]:
    """``node-a`` and ``node-b``, started together (each imports torch for a while)."""
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    nodes = {
        name: NodeProcess(
            node_config(name, shared, url, pacs, quiet_seconds, lease_seconds),
            workdir=tmp_path / name,
            env=(env or {}).get(name),
        )
        for name in NODES
    }
    try:
        with ThreadPoolExecutor(len(nodes)) as pool:
            for started in [pool.submit(node.start) for node in nodes.values()]:
                started.result()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def send(nodes: dict[str, NodeProcess], batches: Mapping[str, Sequence[Path]]) -> None:
    """storescu ``batches[name]`` to each named node, all at once."""
    with ThreadPoolExecutor(len(batches)) as pool:
        sent = [
            pool.submit(storescu, nodes[name].dicom_port, files, timeout=300)
            for name, files in batches.items()
            if files
        ]
        for future in sent:
            future.result()


def wait_for_jobs(url: str, count: int, timeout: float, logs: Sequence[NodeProcess]) -> None:
    """Until ``count`` jobs exist and all have finished."""

    def finished() -> bool:
        states = [state for (state,) in state_rows(url, "SELECT state FROM jobs")]
        return len(states) >= count and all(state in FINISHED for state in states)

    try:
        wait_until(finished, timeout, interval=0.5, message=f"{count} jobs finished")
    except TimeoutError:
        tails = "\n".join(f"--- {n.log_path}\n{n.log_text()[-3000:]}" for n in logs)
        jobs = state_rows(url, "SELECT id, state FROM jobs")
        raise AssertionError(f"jobs: {jobs}\n{tails}") from None


def jobs_per_series(url: str) -> Counter[str]:
    return Counter(series for (series,) in state_rows(url, "SELECT series_uid FROM jobs"))


def result_series_per_study(pacs: OrthancServer, modality: str) -> dict[str, list[int]]:
    """Study Instance UID -> the instance count of each of its ``modality`` series."""
    client = pacs.client
    studies = client.post_tools_find(json={"Level": "Study", "Query": {}, "Expand": True})
    uid_of = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in studies}
    found: dict[str, list[int]] = {}
    body = {"Level": "Series", "Query": {"Modality": modality}, "Expand": True}
    for series in client.post_tools_find(json=body):
        found.setdefault(uid_of[series["ParentStudy"]], []).append(len(series["Instances"]))
    return found


def fundus_files(count: int, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        dataset, _ = make_fundus(1000 + seed, 128)
        path = directory / f"op-{seed}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def chest_series(count: int, directory: Path, n_slices: int = 20) -> list[list[Path]]:
    return [
        write_series(
            make_chest_ct(n_slices=n_slices, rows=64, columns=64, pixel_spacing_mm=3.0, seed=s)[0],
            directory / f"ct-{s}",
        )
        for s in range(count)
    ]


# -- (i) one series split across both nodes ---------------------------------------------------


def test_a_series_split_across_two_nodes_runs_once_with_every_instance(
    tmp_path: Path, state_url: str
) -> None:
    (files,) = chest_series(1, tmp_path / "series", n_slices=24)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    series_uid, study_uid = str(header.SeriesInstanceUID), str(header.StudyInstanceUID)
    with (
        OrthancServer(workdir=tmp_path / "orthanc") as pacs,
        two_nodes(tmp_path, state_url, pacs) as nodes,
    ):
        started = time.monotonic()
        # Two senders (or a load balancer) deliver the halves to the two nodes at once.
        send(nodes, {"node-a": files[::2], "node-b": files[1::2]})
        wait_for_jobs(state_url, 1, 120, list(nodes.values()))
        wait_until(lambda: result_series_per_study(pacs, "SR").get(study_uid), 60, message="SR")
        print(
            f"split series: 24 instances over 2 nodes, done in {time.monotonic() - started:.1f} s"
        )
        (job,) = state_rows(state_url, "SELECT series_uid, generation, state FROM jobs")
        assert job == (series_uid, 1, "done")
        # Each node received its half (in whichever of its receiving processes: node-a or
        # node-a/rx2, writing under spool/node-a or spool/node-a_rx2).
        received_by = state_rows(state_url, "SELECT received_by FROM instances")
        assert Counter(name.split("/")[0] for (name,) in received_by) == {
            "node-a": 12,
            "node-b": 12,
        }
        paths = [Path(p) for (p,) in state_rows(state_url, "SELECT path FROM instances")]
        spools = {p.relative_to(tmp_path / "shared" / "spool").parts[0] for p in paths}
        assert {name.split("_rx")[0] for name in spools} == {"node-a", "node-b"}
        ((count, generation),) = state_rows(
            state_url, "SELECT instance_count, generation FROM series"
        )
        assert (count, generation) == (24, 1)
        # Exactly one copy of each result, built from all 24 instances.
        assert result_series_per_study(pacs, "SEG") == {study_uid: [1]}
        assert result_series_per_study(pacs, "SR") == {study_uid: [1]}
        (seg_id,) = pacs.client.post_tools_find(
            json={"Level": "Instance", "Query": {"Modality": "SEG"}}
        )
        seg = pydicom.dcmread(io.BytesIO(pacs.client.get_instances_id_file(seg_id)))
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert {str(item.ReferencedSOPInstanceUID) for item in referenced} == {
            str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
        }


# -- (ii) many series over both nodes --------------------------------------------------------

MANY = 200


def test_many_series_over_two_nodes_are_each_processed_exactly_once(
    tmp_path: Path, state_url: str
) -> None:
    files = fundus_files(MANY, tmp_path / "fundus")
    with (
        OrthancServer(workdir=tmp_path / "orthanc") as pacs,
        two_nodes(tmp_path, state_url, pacs) as nodes,
    ):
        started = time.monotonic()
        send(nodes, {"node-a": files[0::2], "node-b": files[1::2]})
        received = time.monotonic()
        wait_for_jobs(state_url, MANY, 600, list(nodes.values()))
        processed = time.monotonic()
        wait_until(
            lambda: sum(map(len, result_series_per_study(pacs, "SR").values())) >= MANY,
            120,
            message=f"{MANY} SR series in Orthanc",
        )
        print(
            f"{MANY} series over 2 nodes: received in {received - started:.1f} s,"
            f" all jobs finished after {processed - started:.1f} s"
        )
        per_series = jobs_per_series(state_url)
        assert len(per_series) == MANY and set(per_series.values()) == {1}
        states = Counter(s for (s,) in state_rows(state_url, "SELECT state FROM jobs"))
        assert states == {"done": MANY}
        owners = state_rows(
            state_url,
            "SELECT detail FROM job_events WHERE event = 'started'",
        )
        ran_on = Counter(detail.rpartition("@")[2] for (detail,) in owners)
        print(f"jobs run per node: {dict(ran_on)}")
        assert set(ran_on) == set(NODES)  # both nodes worked
        assert sum(ran_on.values()) == MANY  # no job was started twice
        results = result_series_per_study(pacs, "SR")
        assert len(results) == MANY and all(counts == [1] for counts in results.values())


# -- (iii) a node killed while it holds jobs ------------------------------------------------


@pytest.mark.parametrize("fault", ["inference_started", "export_first_object_sent"])
def test_a_killed_nodes_leases_expire_and_the_other_node_takes_its_jobs_over(
    tmp_path: Path, state_url: str, fault: str
) -> None:
    series = chest_series(6, tmp_path / "series")
    with (
        OrthancServer(workdir=tmp_path / "orthanc") as pacs,
        two_nodes(
            tmp_path,
            state_url,
            pacs,
            quiet_seconds=3.0,
            lease_seconds=KILLED_LEASE_SECONDS,
            env={"node-a": {"AINODE_FAULT": fault}},
        ) as nodes,
    ):
        started = time.monotonic()
        send(
            nodes,
            {
                "node-a": [f for files in series[0::2] for f in files],
                "node-b": [f for files in series[1::2] for f in files],
            },
        )
        wait_until(lambda: not nodes["node-a"].running(), 120, message=f"node-a killed at {fault}")
        killed = time.monotonic()
        assert f"point={fault}" in nodes["node-a"].log_text()
        wait_for_jobs(state_url, len(series), 180, list(nodes.values()))
        finished = time.monotonic()
        per_series = jobs_per_series(state_url)
        assert len(per_series) == len(series) and set(per_series.values()) == {1}
        states = [s for (s,) in state_rows(state_url, "SELECT state FROM jobs")]
        assert states == ["done"] * len(series)
        takeovers = [
            detail
            for (detail,) in state_rows(
                state_url, "SELECT detail FROM job_events WHERE event = 'lease_expired'"
            )
        ]
        print(
            f"{fault}: node-a killed {killed - started:.1f} s after the first send; all"
            f" {len(series)} jobs done {finished - killed:.1f} s later; takeovers: {takeovers}"
        )
        # node-b took over what node-a held when it died (a running job, or an export).
        kind = "export lease" if fault == "export_first_object_sent" else "lease"
        assert any(
            t.startswith(f"{kind} of ")
            and "@node-a expired; taken over by" in t
            and t.endswith("@node-b")
            for t in takeovers
        ), takeovers
        # Exactly one copy of each result series in Orthanc, whole.
        for modality in ("SEG", "SR"):
            results = wait_until(
                lambda m=modality: (
                    found if len(found := result_series_per_study(pacs, m)) == len(series) else None
                ),
                60,
                message=f"{modality} of every series",
            )
            assert all(counts == [1] for counts in results.values()), results
        assert nodes["node-b"].running()
