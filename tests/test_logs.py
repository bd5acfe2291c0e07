# SPDX-License-Identifier: MIT
"""Log output: journald field names, one JSON line per event, no payloads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from nexusd.logs import JournalRenderer, journal_field_name
from tests.harness import FakePort, call, start_daemon

_JOURNAL_FIELD = re.compile(r"\A[A-Z][A-Z0-9_]{0,63}\Z")


class TestJournalFieldName:
    @given(st.text(max_size=100))
    def test_any_key_becomes_a_valid_field(self, key: str) -> None:
        """If any key is logged, its journal field name is valid."""
        assert _JOURNAL_FIELD.match(journal_field_name(key))

    def test_renderer_sends_valid_fields(self, monkeypatch) -> None:
        """If an event has odd keys, the journal gets only valid names and
        the message is the event name."""
        sent: list[tuple[str, dict[str, str]]] = []
        renderer = JournalRenderer()
        monkeypatch.setattr(
            renderer, "_send", lambda msg, **kw: sent.append((msg, kw))
        )

        with pytest.raises(structlog.DropEvent):
            renderer(
                None,
                "warning",
                {
                    "event": "call_finished",
                    "_source": "x",
                    "a-b": 1,
                    "MESSAGE": "f",
                },
            )

        message, sent_fields = sent[0]
        assert message == "call_finished"
        assert sent_fields["PRIORITY"] == "4"
        assert all(_JOURNAL_FIELD.match(k) for k in sent_fields)
        assert "MESSAGE" not in sent_fields


class TestCallLog:
    async def test_one_line_per_call_without_payload(
        self, tmp_path: Path
    ) -> None:
        """If a call carries a payload, its log line has source, service,
        argument, outcome, duration, payload length and hash, not content."""
        port = FakePort()
        port.add("work", guest=True)
        daemon = await start_daemon(tmp_path, port)
        secret = {"ports": [8080], "config_sha256": "c" * 64}
        try:
            with capture_logs() as logs:
                await call(
                    daemon, "nexus.ContainerCreate", "web", payload=secret
                )
        finally:
            await daemon.stop()

        lines = [e for e in logs if e["event"] == "call_finished"]
        assert len(lines) == 1
        line = lines[0]
        assert line["source"] == "work"
        assert line["service"] == "nexus.ContainerCreate"
        assert line["arg"] == "web"
        assert line["outcome"] == "ok"
        assert line["duration_ms"] >= 0
        assert line["payload_len"] == len(json.dumps(secret))
        assert len(line["payload_sha256"]) == 16
        assert "c" * 64 not in repr(logs)

    def test_json_lines_escape_newlines(self) -> None:
        """If a logged value holds a newline and a forged record, nexusd's
        own JSON output keeps one line, and the value stays a value."""
        import subprocess
        import sys

        code = (
            "import structlog\n"
            "from nexusd.logs import configure_logging\n"
            "configure_logging(journal=False)\n"
            "structlog.get_logger().warning('x', value='a\\n{\"event\": 1}')\n"
        )

        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )

        lines = proc.stderr.splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["value"] == 'a\n{"event": 1}'


class TestStdlibRecords:
    def test_asyncio_traceback_is_one_json_line(self) -> None:
        """If asyncio logs an error with a traceback, nexusd's stderr still
        holds one JSON record per line."""
        import subprocess
        import sys

        code = (
            "import logging\n"
            "from nexusd.logs import configure_logging\n"
            "configure_logging(journal=False)\n"
            "try:\n"
            "    raise OSError(24, 'Too many open files')\n"
            "except OSError:\n"
            "    logging.getLogger('asyncio').exception('socket.accept()')\n"
        )

        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )

        lines = proc.stderr.splitlines()
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert record["logger"] == "asyncio"
        assert "Too many open files" in record["exception"]
