"""The previous run's client list (backing/rbd_previous.py): what is trusted, what is written."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from backing import rbd_previous


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    yield
    rbd_previous.stop_recording()


def test_the_previous_run_of_this_host_is_trusted_and_the_file_is_written_afresh(
    tmp_path: Path,
) -> None:
    path = tmp_path / rbd_previous.FILE_NAME
    path.write_text(f"host {socket.gethostname()}\n127.0.0.1:0/1\n127.0.0.1:0/2\n")
    assert rbd_previous.take_over(tmp_path) == {"127.0.0.1:0/1", "127.0.0.1:0/2"}
    assert rbd_previous.is_previous("127.0.0.1:0/2")
    assert not rbd_previous.is_previous("127.0.0.1:0/3")
    assert path.read_text().count("\n") == 3  # untouched until this run's first client
    rbd_previous.record("127.0.0.1:0/3")
    rbd_previous.record("127.0.0.1:0/4")
    assert path.read_text() == f"host {socket.gethostname()}\n127.0.0.1:0/3\n127.0.0.1:0/4\n"
    assert rbd_previous.is_previous("127.0.0.1:0/1")  # still this run's to fence


def test_a_file_written_on_another_host_proves_nothing(tmp_path: Path) -> None:
    (tmp_path / rbd_previous.FILE_NAME).write_text("host elsewhere\n127.0.0.1:0/1\n")
    assert rbd_previous.take_over(tmp_path) == frozenset()
    assert not rbd_previous.is_previous("127.0.0.1:0/1")


def test_a_run_that_stopped_trusts_and_records_nothing(tmp_path: Path) -> None:
    path = tmp_path / rbd_previous.FILE_NAME
    path.write_text(f"host {socket.gethostname()}\n127.0.0.1:0/1\n")
    rbd_previous.take_over(tmp_path)
    rbd_previous.stop_recording()
    rbd_previous.record("127.0.0.1:0/5")
    assert not rbd_previous.is_previous("127.0.0.1:0/1")
    assert path.read_text() == f"host {socket.gethostname()}\n127.0.0.1:0/1\n"
