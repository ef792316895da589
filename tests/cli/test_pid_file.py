"""The pid file of ``bastion serve`` is removed only by the process that wrote it."""

from __future__ import annotations

import os
from pathlib import Path

from bastion.cli.serve import remove_pid_file


def test_a_pid_file_naming_another_process_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bastion.pid"
    path.write_text(str(os.getpid() + 1))
    remove_pid_file(path)
    assert path.read_text() == str(os.getpid() + 1)


def test_the_writer_removes_its_own_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "bastion.pid"
    path.write_text(str(os.getpid()))
    remove_pid_file(path)
    assert not path.exists()
