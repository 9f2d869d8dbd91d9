"""Log set-up in process: JSON lines, message fields, library loggers held at WARNING."""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import BUILT_IN_CHEST_RULE, settings_from_mapping
from node.logs import LIBRARY_LOGGERS, OWN_LOGGERS, RECENT, configure, message_fields
from tests.support.dcmtk import storescu
from tools.net import wait_until
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

#: ``<time> <LEVEL> <logger>: <message>`` (the text format).
_TEXT_LINE = re.compile(r"^\S+Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): ")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("node.test", logging.INFO, __file__, 1, msg, args, None)


def test_fields_come_from_the_format_string_and_its_arguments() -> None:
    record = _record("job failed job_id=%d reason=%s took=%.1fs", 7, "a b=c", 2.25)
    assert message_fields(record) == {"job_id": 7, "reason": "a b=c", "took": 2.25}
    # A value with spaces and '=' stays whole; reserved keys get a suffix.
    assert message_fields(_record("x level=%s", "high")) == {"level_": "high"}
    assert message_fields(_record("%s listening port=%d", "HTTP", 8080)) == {"port": 8080}
    assert message_fields(_record("100%% done n=%d", 3)) == {"n": 3}
    # Formats that cannot be mapped one-to-one give no fields.
    assert message_fields(_record("width %*d", 3, 4)) == {}
    assert message_fields(_record("a=%s b=%s", 1)) == {}


def test_json_lines_have_time_level_logger_message_fields_and_extra(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("INFO", "json")
    log = logging.getLogger("node.test")
    log.info("job done job_id=%d rule=%s", 12, "chest ct")
    log.warning("slow", extra={"seconds": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("job failed job_id=%d", 13)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert first["level"] == "INFO" and first["logger"] == "node.test"
    assert first["message"] == "job done job_id=12 rule=chest ct"
    assert first["job_id"] == 12 and first["rule"] == "chest ct"
    assert lines[1]["seconds"] == 3
    assert lines[2]["job_id"] == 13 and "ValueError: boom" in lines[2]["exc_info"]
    # The console's Log page reads the same records, whatever the format.
    assert RECENT.records(text="job failed job_id=13")[0]["level"] == "ERROR"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_libraries_log_info_only_at_debug(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("INFO", log_format)  # type: ignore[arg-type]
    logging.getLogger("highdicom.seg.sop").info("copy attributes of module Patient")
    logging.getLogger("some_new_library").info("chatty")
    logging.getLogger("highdicom.seg.sop").warning("library warning")
    logging.getLogger("node.worker").info("own info")
    quiet = capsys.readouterr().err
    assert "copy attributes" not in quiet and "chatty" not in quiet
    assert "library warning" in quiet and "own info" in quiet

    configure("DEBUG", log_format)  # type: ignore[arg-type]
    logging.getLogger("highdicom.seg.sop").info("copy attributes of module Patient")
    logging.getLogger("some_new_library").debug("chatty")
    loud = capsys.readouterr().err
    assert "copy attributes" in loud and "chatty" in loud


def test_records_go_to_the_current_stderr_after_the_old_one_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CLI run under a captured stderr must not break logging for whatever runs next."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure("INFO", "text")
    logging.getLogger("node.test").warning("into the first stream")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("node.test").warning("into the second stream")
    written = second.getvalue()
    assert "Logging error" not in written
    assert _TEXT_LINE.match(written) and "into the second stream" in written


def test_logging_settings_accept_lower_case_and_environment() -> None:
    settings = settings_from_mapping(
        {"logging": {"level": "debug"}}, environ={"AINODE_LOG_FORMAT": "json"}
    )
    assert settings.logging.level == "DEBUG" and settings.logging.format == "json"
    assert settings_from_mapping({}, environ={}).logging.format == "text"


@pytest.mark.slow
def test_a_job_at_info_logs_no_library_info_lines(tmp_path: Path) -> None:
    """A real node and one ct_lungs job at ``logging.level: info``: only the node's own
    loggers write below WARNING (highdicom alone wrote ~30 INFO lines a job before)."""
    config = {
        "rules": [BUILT_IN_CHEST_RULE],
        "completion": {"series_quiet_seconds": 0.5, "poll_seconds": 0.2},
        "logging": {"level": "info"},
    }
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        datasets, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=43)
        storescu(node.dicom_port, write_series(datasets, tmp_path / "ct"), called_ae="AINODE")
        database = node.data_dir / "state.sqlite3"

        def states() -> list[str]:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                return [str(row[0]) for row in db.execute("SELECT state FROM jobs")]

        wait_until(lambda: states() == ["done"], 300, message="the job done")
    lines = node.log_path.read_text(errors="replace").splitlines()
    parsed = [(line, *m.groups()) for line in lines if (m := _TEXT_LINE.match(line))]
    assert any(logger == "node.orchestration.record" for _, _, logger in parsed), "no job lines"
    library_info = [
        line
        for line, level, logger in parsed
        if level in ("DEBUG", "INFO") and logger.split(".")[0] not in OWN_LOGGERS
    ]
    assert not library_info, "\n".join(library_info[:10])
