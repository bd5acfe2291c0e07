# SPDX-License-Identifier: MIT
"""Journal safety: a value that came from a guest can neither forge another
field nor start another record, in the journal (read off libsystemd's own
wire format) or in the JSON log of a running nexusd."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reliability.dom0 import Dom0, raw_call
from reliability.journal import capture_journal, parse_native

HOSTILE = [
    "web\nMESSAGE=forged",
    "x\nPRIORITY=0\nSYSLOG_IDENTIFIER=sshd",
    "nul\x00SYSLOG_IDENTIFIER=sshd",
    "\r\n\r\nMESSAGE=forged",
    "line\u2028sep\u2029é",
    '"}\n{"event": "forged", "level": "critical"}',
    "A" * 5000,
]
#: Keys code might use that collide with the fields nexusd sets itself.
RESERVED = {
    "syslog_identifier": "sshd",
    "nexus_event": "forged",
    "message": "forged",
    "priority": "0",
    "code_file": "/etc/shadow",
    "message_id": "0" * 32,
    "_pid": "1",
}


def _capture(events: list[tuple[str, dict[str, str]]]):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    try:
        return capture_journal(events)
    except OSError as err:
        pytest.skip(f"needs a private mount namespace (root): {err}")


@pytest.fixture(scope="module")
def journal() -> list[list[tuple[str, bytes]]]:
    return _capture(
        [("call_finished", {"arg": v, "source": "work"}) for v in HOSTILE]
    )


class TestJournalWire:
    def test_one_datagram_per_event(self, journal) -> None:
        """If hostile values are logged, journald gets one record each and
        nothing else."""
        assert len(journal) == len(HOSTILE)
        assert all(rec[0][0] != "EXTRA_DATAGRAM" for rec in journal)

    @pytest.mark.parametrize("index", range(len(HOSTILE)))
    def test_hostile_value_stays_inside_its_field(
        self, journal, index: int
    ) -> None:
        """If a logged value holds newlines, NULs or field syntax, it
        arrives byte for byte in its own field, and the record has only
        nexusd's fields with nexusd's values."""
        record = journal[index]
        names = [name for name, _ in record]
        fields = dict(record)

        assert fields["ARG"] == HOSTILE[index].encode()
        assert fields["MESSAGE"] == b"call_finished"
        assert fields["PRIORITY"] == b"4"
        assert fields["SYSLOG_IDENTIFIER"] == b"nexusd"
        assert len(names) == len(set(names))
        assert set(names) == {
            "MESSAGE",
            "PRIORITY",
            "SYSLOG_IDENTIFIER",
            "NEXUS_EVENT",
            "CODE_FILE",
            "CODE_LINE",
            "CODE_FUNC",
            "ARG",
            "SOURCE",
            "LEVEL",
        }

    def test_keys_cannot_pose_as_nexusd_or_trusted_fields(self) -> None:
        """If an event's keys name fields nexusd or journald set, the log
        call still succeeds, nexusd's values stand, and ``_PID`` becomes an
        ordinary field."""
        (record,) = _capture([("call_finished", dict(RESERVED))])
        fields = dict(record)

        assert fields["SYSLOG_IDENTIFIER"] == b"nexusd"
        assert fields["NEXUS_EVENT"] == b"call_finished"
        assert fields["MESSAGE"] == b"call_finished"
        assert fields["PRIORITY"] == b"4"
        assert fields["CODE_FILE"] != b"/etc/shadow"
        assert "MESSAGE_ID" not in fields
        assert fields["F_PID"] == b"1"
        assert not any(name.startswith("_") for name in fields)


class TestNativeParser:
    def test_binary_field_is_read_by_its_length(self) -> None:
        """If a value holds a newline, its length frames it (as journald
        reads it), so the parser used above reads what journald reads."""
        datagram = b"A=1\nB\n" + (5).to_bytes(8, "little") + b"x\ny=z\nC=3\n"

        assert parse_native(datagram) == [
            ("A", b"1"),
            ("B", b"x\ny=z"),
            ("C", b"3"),
        ]

    def test_cut_datagram_is_refused(self) -> None:
        """If a datagram ends inside a field, the parser says so."""
        with pytest.raises(ValueError, match="newline"):
            parse_native(b"A=1\nB=2")


class TestJsonLog:
    def test_hostile_calls_give_one_json_line_each_without_payload(
        self, tmp_path: Path
    ) -> None:
        """If guests send hostile headers and payloads, nexusd's JSON log
        has one parsable line per call, no line from the payload, and no
        payload byte."""
        dom0 = Dom0(tmp_path / "dom0").create()
        marker = "PAYLOAD-MARKER-7f3a"
        calls = [
            b"nexus.ContainerCreate+web\nx work keyword adminvm\0",
            b"nexus.ContainerList+ work\nPRIORITY=0 keyword adminvm\0",
            b"nexus.ContainerCreate+web work keyword adminvm\0"
            + f'{{"x": "{marker}\\n{{\\"event\\": 1}}"}}'.encode(),
            b"nexus.ContainerReport+web work keyword adminvm\0"
            + f'{{"state": "running", "message": "{marker}"}}'.encode(),
            b"nexus.LinkRequest+pg.5432 work name db\0"
            + f'{{"from": "{marker}\\u0000"}}'.encode(),
        ]
        try:
            dom0.start_qubesd()
            dom0.start_nexusd()
            assert dom0.wait_serving("db")
            for data in calls:
                raw_call(dom0.layout.nexusd_socket, data)
            dom0.kill_nexusd(15)
        finally:
            dom0.close()

        text = dom0.log_file.read_text()
        records = [json.loads(line) for line in text.splitlines()]
        finished = [
            r
            for r in records
            if r["event"] == "call_finished" and r.get("source") != "db"
        ]
        assert len(finished) == len(calls)
        assert {r["level"] for r in records} <= {"info", "warning", "error"}
        assert marker not in text
