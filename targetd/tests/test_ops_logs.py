"""Structured log lines and the secret scrubber."""

from __future__ import annotations

import io
import json
import logging

import pytest

from targetd import logs


@pytest.fixture
def capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logs.setup("INFO", "kv", stream)
    yield logging.getLogger("targetd.test"), stream
    logs.scrubber.set_secrets([])
    logging.getLogger().handlers.clear()


def test_key_value_line_with_context(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = capture
    log.info("login", extra=logs.fields(initiator="iqn.2026-11.org.x:h", tsih=3, reason="a b"))
    line = stream.getvalue()
    assert line.endswith(
        " level=info logger=targetd.test event=login"
        ' initiator=iqn.2026-11.org.x:h tsih=3 reason="a b"\n'
    )
    assert line.startswith("ts=")


def test_traceback_stays_on_one_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = capture
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("command failed", extra=logs.fields(lun=0))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and 'exc="Traceback' in lines[0] and "ValueError: boom" in lines[0]


def test_secrets_are_scrubbed_everywhere(capture: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = capture
    logs.scrubber.set_secrets(["alice-secret-1", "alice-secret-1-longer"])
    log.warning("odd key CHAP_S=%s", "alice-secret-1-longer", extra=logs.fields(s="alice-secret-1"))
    line = stream.getvalue()
    assert "alice-secret" not in line
    assert 'event="odd key CHAP_S=<hidden>"' in line and "s=<hidden>" in line


def test_json_format() -> None:
    stream = io.StringIO()
    logs.setup("INFO", "json", stream)
    try:
        logging.getLogger("targetd").info("serving", extra=logs.fields(portal="127.0.0.1:3260"))
    finally:
        logging.getLogger().handlers.clear()
    record = json.loads(stream.getvalue())
    assert record["event"] == "serving" and record["portal"] == "127.0.0.1:3260"


def test_a_worker_process_names_itself_on_every_line(
    capture: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    log, out = capture
    monkeypatch.setitem(logs.PROCESS_FIELDS, "worker", 1)
    log.info("login", extra=logs.fields(tsih=3))
    line = out.getvalue().strip()
    assert line.split(" ", 3)[3] == "worker=1 event=login tsih=3", line
