"""Several receiver processes behind one DICOM port (``dicom.receiver_processes``, issue 14).

The process-level tests start a real ``ainode serve`` with 2 receiver processes (its own
and one ``…/rx2``), send with real dcmtk ``storescu`` (``TCP_NODELAY=1``) and read the
SQLite state the processes share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydantic import ValidationError
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
)

from node.config import BUILT_IN_CHEST_RULE, Settings, load_settings
from node.dicom.receiver import MainChannel, receiver_settings, settings_message
from node.dicom.receivers import ReceiverProcesses, ReceiverReports
from node.dicom.refusals import refused_associations
from node.dicom.scp import MAXIMUM_ASSOCIATIONS
from node.host import usable_cpus
from node.logs import RECENT
from node.worklist.events import EventType as UpsEventType
from node.worklist.events import UpsEvent
from tests.support.admin import add_console_user, login_session
from tests.support.dcmtk import storescu
from tests.support.net import wait_until
from tests.support.pki import make_pki
from tests.support.scu import associate
from tests.test_several_nodes import chest_series, jobs_per_series, state_rows, wait_for_jobs
from tests.test_ups_dimse import TASK, create, get, state_of, workitem
from tools.net import LOCALHOST, free_port
from tools.node_process import NodeProcess
from tools.proc import stat_fields

RX2 = "rx-test/rx2"


# -- configuration ------------------------------------------------------------------------


def test_receiver_processes_default_to_one_per_usable_cpu_up_to_four() -> None:
    settings = Settings()
    assert settings.dicom.receiver_processes == "auto"
    assert settings.receiver_process_count == min(4, usable_cpus()) >= 1
    assert load_settings(environ={}).dicom.receiver_processes == "auto"  # make run's defaults
    fixed = Settings.model_validate({"dicom": {"receiver_processes": 3}})
    assert fixed.receiver_process_count == 3
    for wrong in (0, 33, "many"):
        with pytest.raises(ValidationError, match="receiver_processes"):
            Settings.model_validate({"dicom": {"receiver_processes": wrong}})


def test_usable_cpus_follow_the_affinity_and_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cpus(cpu_max) == affinity  # no cgroup v2 file
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # docker run --cpus 0.5
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text("150000 100000\n")  # --cpus 1.5: 2 CPUs used part of the time
    assert usable_cpus(cpu_max) == min(affinity, 2)
    cpu_max.write_text("garbage\n")
    assert usable_cpus(cpu_max) == affinity


def test_several_receiver_processes_refuse_an_in_memory_state(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not an in-memory database"):
        Settings.model_validate(
            {"dicom": {"receiver_processes": 2}, "state": {"url": "sqlite:///:memory:"}}
        )
    # One process may keep it in memory (auto then means the node's own only); several may
    # share a file.
    in_memory = Settings.model_validate({"state": {"url": "sqlite:///:memory:"}})
    assert in_memory.receiver_process_count == 1
    shared = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    Settings.model_validate({"dicom": {"receiver_processes": 2}, "state": {"url": shared}})


def test_restart_backoff_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="below receiver_restart_seconds"):
        Settings.model_validate(
            {"dicom": {"receiver_restart_seconds": 5, "receiver_restart_max_seconds": 2}}
        )


def test_connections_go_to_the_process_with_the_fewest_open_ones_in_turn(
    tmp_path: Path,
) -> None:
    """The spread itself, on real sockets and descriptors (no process started): each
    accepted connection goes to the least busy process, on a tie a receive-only one before
    the main process and those in turn, and a process's reported closes make it the least
    busy again."""
    settings = Settings.model_validate(
        {"node": {"data_dir": str(tmp_path)}, "dicom": {"receiver_processes": 3}}
    )
    receivers = ReceiverProcesses(settings, "spread")
    ends: dict[str, socket.socket] = {}
    for slot in receivers._slots:  # what _spawn sets up, without a process
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        slot.channel, ends[slot.name] = ours, theirs
        slot.ready.set()
        threading.Thread(target=receivers._read_reports, args=(slot, ours), daemon=True).start()
    listener = socket.create_server((LOCALHOST, 0))
    port = listener.getsockname()[1]
    clients, kept = [], []

    def accept_one(tls: bool = False) -> str:
        clients.append(socket.create_connection((LOCALHOST, port)))
        server_side, _ = listener.accept()
        if not receivers.hand_off(server_side, tls):
            kept.append(server_side)
            return "main"
        server_side.close()  # as the listener does once handed
        for name, end in ends.items():
            if end.fileno() == -1:  # closed by the test: that process is gone
                continue
            end.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                kind, fds, _, _ = socket.recv_fds(end, 1, 1)
                (fd,) = fds
                with socket.socket(fileno=fd) as handed:  # the same connection
                    clients[-1].sendall(b"x")
                    assert handed.recv(1) == b"x" and kind == (b"T" if tls else b"P")
                return name
        raise AssertionError("handed to no process")

    try:
        first = [accept_one(tls=n == 4) for n in range(6)]
        assert first == ["spread/rx2", "spread/rx3", "main"] * 2  # the main process last
        assert receivers.open_connections() == {"spread/rx2": 2, "spread/rx3": 2}
        ends["spread/rx3"].send(b"c")  # rx3 reports a connection closed
        wait_until(lambda: receivers.open_connections()["spread/rx3"] == 1, 5)
        assert accept_one() == "spread/rx3"
        receivers.own_closed()
        receivers.own_closed()  # both of the main process's connections closed
        assert [accept_one(), accept_one()] == ["main", "main"]
        assert accept_one() == "spread/rx2"  # all at 2 again: the next in turn
        ends["spread/rx2"].close()  # rx2's process is gone: never chosen again
        wait_until(lambda: receivers._slots[0].channel is None, 30)
        assert {accept_one() for _ in range(4)} == {"main", "spread/rx3"}
    finally:
        for sock in [*clients, *kept, listener, *ends.values()]:
            sock.close()


def test_past_the_node_limit_a_connection_stays_with_the_main_process_to_be_rejected(
    tmp_path: Path,
) -> None:
    """The association limit is the node's, over all its processes: with 32 connections
    open (wherever), the 33rd is served by the main process, whose SCP rejects it."""
    settings = Settings.model_validate(
        {"node": {"data_dir": str(tmp_path)}, "dicom": {"receiver_processes": 2}}
    )
    receivers = ReceiverProcesses(settings, "limit")
    (slot,) = receivers._slots
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    slot.channel, slot.open = ours, 1
    slot.ready.set()
    receivers._own_open = MAXIMUM_ASSOCIATIONS - 1
    client, server_side = socket.socketpair()
    try:
        assert receivers.open_over_all() == MAXIMUM_ASSOCIATIONS
        assert not receivers.hand_off(server_side, False)  # kept here, to be rejected
        assert receivers.open_over_all() == MAXIMUM_ASSOCIATIONS + 1
        receivers.own_closed()
        slot.open -= 1  # one of rx2's closed: room again, and rx2 is the least busy
        assert receivers.hand_off(server_side, False)
    finally:
        for sock in (ours, theirs, client, server_side):
            sock.close()


def test_what_a_receiver_process_reports_is_taken_as_the_main_process_own(
    tmp_path: Path,
) -> None:
    """Each record a receiver process writes (:class:`MainChannel`, over a real socket
    pair) reaches the main process's hooks, counters and recent log lines; a record it
    cannot take is logged and the next ones are still read."""
    settings = Settings.model_validate(
        {"node": {"data_dir": str(tmp_path)}, "dicom": {"receiver_processes": 2}}
    )
    taken: list[Any] = []
    reports = ReceiverReports(
        stored=lambda uid: taken.append(("stored", uid)),
        delivered=lambda series: taken.append(("delivered", dict(series))),
        ups_event=lambda event: taken.append(("ups", event)),
        workitem_created=lambda: taken.append(("created",)),
    )
    receivers = ReceiverProcesses(settings, "reports", reports=reports)
    slot = receivers._slots[0]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    slot.channel, slot.open = ours, 2
    reader = threading.Thread(target=receivers._read_reports, args=(slot, ours), daemon=True)
    reader.start()
    main = MainChannel(theirs)
    refused_before = refused_associations().get("calling_ae_not_recognized", 0)
    event = UpsEvent("1.2.3.4", UpsEventType.STATE_REPORT, {"00741000": {"vr": "CS"}}, ("W",))
    many = {f"1.2.{n}": n for n in range(300)}  # more series than one record carries
    try:
        main.stored("1.2.3")
        main.delivered({"1.2.3": 2})
        main.refused("calling_ae_not_recognized")
        main.logged({"time": 1.0, "level": "WARNING", "logger": "x", "message": "from rx2"})
        theirs.send(b"?what")  # not a record the main process knows
        main.ups_event(event)
        main.workitem_created()
        main.delivered(many)
        main.closed()
        wait_until(lambda: slot.open == 1, 30)
        assert taken[:5] == [
            ("stored", "1.2.3"),
            ("delivered", {"1.2.3": 2}),
            ("ups", event),
            ("created",),
            ("delivered", dict(list(many.items())[:256])),
        ]
        assert taken[5] == ("delivered", dict(list(many.items())[256:]))
        assert refused_associations()["calling_ae_not_recognized"] == refused_before + 1
        assert RECENT.records(text="from rx2")[0]["message"] == "from rx2"
        theirs.close()  # the process is gone
        reader.join(5)
        assert slot.channel is None and slot.open == 0
    finally:
        theirs.close()


@pytest.mark.slow
def test_a_receiver_process_that_keeps_dying_is_restarted_with_a_growing_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Its data directory is a file: every start fails to open the state."""
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("a file")
    settings = Settings.model_validate(
        {
            "node": {"bind_address": LOCALHOST, "data_dir": str(not_a_directory)},
            "dicom": {
                "receiver_processes": 2,
                "receiver_restart_seconds": 0.2,
                "receiver_restart_max_seconds": 0.5,
            },
        }
    )
    caplog.set_level(logging.INFO, logger="node.dicom.receivers")
    receivers = ReceiverProcesses(settings, "flaky")
    receivers.start()
    try:
        exits = lambda: [  # noqa: E731
            r.getMessage() for r in caplog.records if "receiver process exited" in r.message
        ]
        wait_until(lambda: len(exits()) >= 4, 60, message="4 failed starts")
        assert receivers.names == ["flaky/rx2"]
        waits = [float(m.rsplit("=", 1)[1]) for m in exits()[:4]]
        assert waits == [0.2, 0.4, 0.5, 0.5]  # doubled, up to the maximum
        assert all("name=flaky/rx2 exit_code=1" in m for m in exits())
    finally:
        receivers.stop()
    assert receivers.pids() == {"flaky/rx2": None}
    assert "receiver process cannot start name=flaky/rx2" in capfd.readouterr().err


# -- process level ------------------------------------------------------------------------


def receiver_pids(node_pid: int) -> list[int]:
    """The receiver processes the node ``node_pid`` started."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is None or int(fields[1]) != node_pid:
            continue
        with contextlib.suppress(OSError):
            if b"node.dicom.receiver" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """``pid`` runs and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


@contextlib.contextmanager
def node_with_receivers(tmp_path: Path, **dicom: Any) -> Any:
    """A node named ``rx-test`` with 2 receiver processes; its children are killed on exit
    whatever happened (the test checks that the node stops them itself)."""
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    config = {
        "node": {"name": "rx-test"},
        "dicom": {"receiver_processes": 2, **dicom},
        "state": {"url": url},
        "workers": {"cpu_threads": 1},
        "completion": {"series_quiet_seconds": 1.5, "poll_seconds": 0.2},
        "rules": [BUILT_IN_CHEST_RULE],
    }
    node = NodeProcess(config, workdir=tmp_path / "node")
    children: set[int] = set()
    try:
        node.start()
        assert node.pid is not None
        wait_until(lambda: len(receiver_pids(node.pid or 0)) == 1, 30, message="rx2 started")
        wait_until(lambda: "receiver process started" in node.log_text(), 30, message="rx2 up")
        # Its start-up objects are frozen for the collector, as the node's own are.
        frozen = re.search(
            r"receiver process started name=\S+ pid=\d+ frozen_objects=(\d+)", node.log_text()
        )
        assert frozen is not None and int(frozen[1]) > 10_000, node.log_text()[-2000:]
        children.update(receiver_pids(node.pid))
        yield node, url, children
    finally:
        if node.pid is not None:
            children.update(receiver_pids(node.pid))
        node.stop()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def received_by(url: str) -> dict[str, int]:
    rows = state_rows(url, "SELECT received_by, COUNT(*) FROM instances GROUP BY received_by")
    return {str(name): int(count) for name, count in rows}


def idle(node: NodeProcess) -> bool:
    """No connection open in any of the node's receiving processes (``/healthz``)."""
    return not any(node.healthz()["receiving"]["open_connections"].values())


@contextlib.contextmanager
def connection_held(port: int) -> Any:
    """An association held open (to the receive-only process, while the processes are
    idle): the next connection goes to the main process."""
    scu = AE(ae_title="HOLDER")
    scu.add_requested_context("1.2.840.10008.1.1")
    assoc = associate(scu, LOCALHOST, port, ae_title="AINODE")
    assert assoc.is_established
    try:
        yield
    finally:
        assoc.release()


def send_one_by_one_until(port: int, files: list[Path], done: Any) -> int:
    """One association per file until ``done()``; how many were sent."""
    for sent, path in enumerate(files, start=1):
        storescu(port, [path])
        if done():
            return sent
    raise AssertionError(f"not done after {len(files)} associations")


@pytest.mark.slow
def test_two_receiver_processes_share_the_port_and_survive_a_killed_child(
    tmp_path: Path,
) -> None:
    series = chest_series(6, tmp_path / "series", n_slices=20)
    with node_with_receivers(tmp_path, receiver_restart_seconds=3.0) as (node, url, children):
        # (1) 4 concurrent associations, one series each: 2 to each process, whatever the
        # kernel would have hashed (the listener hands each to the least busy process).
        with ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(storescu, node.dicom_port, files) for files in series[:4]]:
                done.result()
        assert received_by(url) == {"rx-test": 40, RX2: 40}
        wait_until(lambda: idle(node), 10, message="their closes counted")
        storescu(node.dicom_port, series[4])  # alone: to the receive-only process
        assert received_by(url) == {"rx-test": 40, RX2: 60}
        wait_for_jobs(url, 5, 180, [node])
        sent = sum(len(files) for files in series[:5])
        assert sum(received_by(url).values()) == sent  # each instance recorded once
        per_series = state_rows(
            url, "SELECT series_uid, COUNT(*) FROM instances GROUP BY series_uid"
        )
        assert sorted(count for _, count in per_series) == [20] * 5
        assert sorted(jobs_per_series(url).values()) == [1] * 5  # each series ran once
        assert {state for (state,) in state_rows(url, "SELECT state FROM jobs")} == {"done"}
        # What an admin sees counts every process's instances.
        health = lambda: httpx.get(f"{node.url}/healthz").json()["dicom"]  # noqa: E731
        wait_until(lambda: health().get("stored") == sent, 10, message="counts aggregated")

        # (2) SIGKILL the receiver process: the node keeps receiving, and restarts it.
        (child,) = receiver_pids(node.pid or 0)
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: not alive(child), 10, message="rx2 killed")
        storescu(node.dicom_port, series[5][:6])  # within the 3 s restart wait
        wait_until(lambda: "receiver process exited name=rx-test/rx2" in node.log_text(), 10)
        wait_until(
            lambda: [p for p in receiver_pids(node.pid or 0) if p != child], 30, message="rx2 back"
        )
        (restarted,) = receiver_pids(node.pid or 0)
        children.add(restarted)
        wait_until(lambda: node.log_text().count("receiver process started name=") == 2, 30)
        before = received_by(url)[RX2]
        send_one_by_one_until(
            node.dicom_port, series[5][6:], lambda: received_by(url)[RX2] > before
        )
        # Counters never go down: the killed process's count stays in the sum.
        wait_until(lambda: health().get("stored") == sum(received_by(url).values()), 10)

        # (3) SIGTERM to the node's process alone: it stops its receiver and exits cleanly.
        main = node.pid or 0
        os.kill(main, signal.SIGTERM)
        wait_until(lambda: not alive(main), 30, message="node exited")
        assert not alive(restarted)
        assert "receiver processes stopped count=1" in node.log_text()
        assert "node stopped" in node.log_text()  # a clean exit, not a crash


@pytest.mark.slow
def test_receiver_processes_exit_when_the_node_is_killed(tmp_path: Path) -> None:
    with node_with_receivers(tmp_path) as (node, _url, children):
        (child,) = children
        os.kill(node.pid or 0, signal.SIGKILL)  # no chance to stop them
        wait_until(lambda: not alive(child), 15, message="rx2 exited with its node")


@pytest.mark.slow
def test_receiver_processes_serve_tls_with_the_nodes_access_control(tmp_path: Path) -> None:
    """TLS only, mutual authentication and ``node.accept``: a receiver process applies them
    as the main process does (one association at a time goes to the receive-only process),
    and the node's refusal counters count its refusals."""
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    config = {
        "node": {
            "name": "rx-tls",
            "plain_dicom": False,
            "tls": {
                "port": tls_port,
                "certificate": str(pki.server.certificate),
                "private_key": str(pki.server.key),
                "ca_certificates": str(pki.ca.certificate),
                "require_client_certificate": True,
            },
            "accept": [{"ae_title": "CT_SCANNER"}],
        },
        "dicom": {"receiver_processes": 2},
        "state": {"url": url},
    }
    (files,) = chest_series(1, tmp_path / "series", n_slices=20)
    trusted = ["+tls", str(pki.client.key), str(pki.client.certificate)]
    trusted += ["+cf", str(pki.ca.certificate), "-aec", "AINODE"]

    def store(path: Path, calling_ae: str) -> int:
        command = ["storescu", *trusted, "-aet", calling_ae, LOCALHOST, str(tls_port), str(path)]
        env = {**os.environ, "TCP_NODELAY": "1"}
        return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode

    node = NodeProcess(config, workdir=tmp_path / "node", wait_for_routines=False)
    with node:
        wait_until(lambda: "receiver process started" in node.log_text(), 30, message="rx2 up")
        # An AE that node.accept does not list is refused by the receiver process.
        assert all(store(files[0], "INTRUDER") != 0 for _ in range(8))
        assert received_by(url) == {}
        # A listed AE's associations are served there.
        for path in files[:4]:
            assert store(path, "CT_SCANNER") == 0
        assert received_by(url) == {"rx-tls/rx2": 4}
        refusals = node.log_text().count("reason=calling-ae-not-recognized")
        assert refusals == 8
        # The main process counts them (/metrics) and shows them (its recent log lines).
        metrics = httpx.get(f"{node.url}/metrics", timeout=10).text
        assert 'ainode_associations_refused_total{reason="calling_ae_not_recognized"} 8.0' in (
            metrics
        )
        add_console_user(node, "admin", "rx-test-password-1")
        client, _ = login_session(node.url, "admin", "rx-test-password-1")
        try:
            logged = client.get("/api/log", params={"text": "calling-ae-not-recognized"})
        finally:
            client.close()
        assert logged.status_code == 200 and len(logged.json()) == 8, logged.text


@pytest.mark.slow
def test_receiver_processes_share_a_postgresql_state(tmp_path: Path, postgres_url: str) -> None:
    """With PostgreSQL the receiver process records into the same database; the series
    completes once and its job runs once."""
    config = {
        "node": {"name": "rx-pg"},
        "dicom": {"receiver_processes": 2},
        "state": {"url": postgres_url},
        "workers": {"cpu_threads": 1},
        "completion": {"series_quiet_seconds": 1.5, "poll_seconds": 0.2},
        "rules": [BUILT_IN_CHEST_RULE],
    }
    (files,) = chest_series(1, tmp_path / "series", n_slices=20)
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        wait_until(lambda: "receiver process started" in node.log_text(), 30, message="rx2 up")
        assert node.healthz()["receiving"] == {
            "processes": 2,
            "open_connections": {"rx-pg": 0, "rx-pg/rx2": 0},
        }
        storescu(node.dicom_port, files[:10])  # a lone association: the receive-only process
        # Its sender's release, reported by rx2, starts the node's read-ahead at once.
        uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
        started = f"quiet read-ahead started series_uid={uid} instances=10 trigger=delivered"
        wait_until(lambda: started in node.log_text(), 10, message="read when delivered")
        wait_until(lambda: idle(node), 10, message="its close counted")
        with connection_held(node.dicom_port):  # rx2 busy: the next one is the main process's
            storescu(node.dicom_port, files[10:])
        assert received_by(postgres_url) == {"rx-pg/rx2": 10, "rx-pg": 10}
        assert sum(received_by(postgres_url).values()) == len(files)
        wait_for_jobs(postgres_url, 1, 120, [node])
        assert list(jobs_per_series(postgres_url).values()) == [1]
        assert state_rows(postgres_url, "SELECT state FROM jobs") == [("done",)]


@pytest.mark.slow
def test_receiver_processes_serve_the_worklist_over_dimse(tmp_path: Path) -> None:
    """A UPS association may land on either process: each N-CREATE on its own association
    (the receive-only process's) succeeds, every workitem is found over another association
    (held while another is open: the main process's), and the node's performer looks at the
    workitems created in the receiver process at once (its look is a minute away)."""
    config = {
        "node": {"name": "rx-ups"},
        "dicom": {"receiver_processes": 2},
        "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
        "worklist": {"tasks": {f"{TASK[0]}^{TASK[1]}": "chest"}, "poll_seconds": 60},
    }
    scu = AE(ae_title="RIS")
    scu.add_requested_context(UnifiedProcedureStepPush)
    scu.add_requested_context(UnifiedProcedureStepPull)
    due_now = workitem()
    due_now.ScheduledProcedureStepStartDateTime = time.strftime("%Y%m%d%H%M%S")
    with NodeProcess(config, workdir=tmp_path / "node", wait_for_routines=False) as node:
        wait_until(lambda: "receiver process started" in node.log_text(), 30, message="rx2 up")
        created = []
        for n in range(4):
            assoc = associate(scu, LOCALHOST, node.dicom_port, ae_title=node.ae_title)
            assert assoc.is_established
            try:
                status, uid = create(assoc, due_now if n == 3 else None)
            finally:
                assoc.release()
            assert status == 0x0000
            created.append(uid)
        wait_until(lambda: idle(node), 10, message="their closes counted")
        with connection_held(node.dicom_port):
            assoc = associate(scu, LOCALHOST, node.dicom_port, ae_title=node.ae_title)
            try:
                for uid in created:
                    assert get(assoc, uid)[0] == 0x0000
                # Due now, its input not on the node: the performer, told by the receiver
                # process, claims it and cancels it within seconds, not a minute.
                wait_until(lambda: state_of(assoc, created[3]) == "CANCELED", 15)
                assert state_of(assoc, created[0]) == "SCHEDULED"
            finally:
                assoc.release()


def test_the_settings_a_receiver_process_gets_read_back_the_same() -> None:
    """The sections sent to a receiver process (a source of each kind, a worklist, access
    control) validate again there to equal values, under the process's own name."""
    settings = Settings.model_validate(
        {
            "node": {"name": "main", "accept": [{"ae_title": "CT", "hosts": ["10.0.0.0/8"]}]},
            "dicom": {"receiver_processes": 3},
            "worklist": {"tasks": {"99AINODE^LUNGS": "chest"}},
            "sources": {
                "pacs": {"kind": "dimse", "ae_title": "PACS", "host": "10.1.1.1", "port": 104},
                "web": {
                    "kind": "dicomweb",
                    "url": "https://pacs.example/dicom-web",
                    "auth": {"type": "basic", "username": "ai", "password": "s3cret"},
                },
            },
        }
    )
    spec = json.loads(settings_message(settings, "main/rx3"))
    again = receiver_settings(Settings.model_validate(spec["settings"]), spec["name"])
    for section in ("state", "completion", "dicom", "logging", "worklist", "sources"):
        assert getattr(again, section) == getattr(settings, section)
    assert again.node.identity == "main/rx3"
    assert again.node.accept == settings.node.accept
    assert again.spool_dir == settings.spool_dir  # the node's spool, its own subdirectory
    assert again.spool_subdir == "main_rx3"
    assert "ct_lungs" in spec["routines"]


@pytest.mark.slow
def test_a_restarted_receiver_process_re_records_its_own_spool_files(tmp_path: Path) -> None:
    """A file the process fsynced but had not recorded when it died (planted here in its
    spool subdirectory) is recorded, as received by it, when it starts again; a file in the
    main process's part of the spool is left to the main process's own start-up."""
    (files,) = chest_series(1, tmp_path / "series", n_slices=2)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    with node_with_receivers(tmp_path) as (node, url, children):
        spool = node.data_dir / "spool"
        owners = ("rx-test_rx2", "")  # the receiver process's subdirectory; the main's part
        for owner, path, header in zip(owners, files, headers, strict=True):
            folder = spool / owner / header.StudyInstanceUID / header.SeriesInstanceUID
            folder.mkdir(parents=True)
            shutil.copy(path, folder / f"{header.SOPInstanceUID}.dcm")
        (child,) = children
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: node.log_text().count("receiver process started name=") == 2, 30)
        recorded = state_rows(url, "SELECT sop_uid, received_by FROM instances")
        assert recorded == [(str(headers[0].SOPInstanceUID), RX2)]
