# SPDX-License-Identifier: MIT
"""nexusctl as an administrator runs it: a separate process talking to a
running nexusd (simulated dom0) over a private dbus-daemon; exact output,
JSON, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexusd.dbus.jobs import JobContext
from nexusd.dbus.private_bus import PrivateBus
from nexusd.errors import Conflict
from nexusd.sim.layout import SimLayout
from tests.harness import FakePort, call, db_rows, lay_out_policy, start_daemon

NEXUSCTL = Path(sys.executable).with_name("nexusctl")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def bus():
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    with PrivateBus() as private:
        yield private


@pytest.fixture
def root(tmp_path: Path, shared_dir: Path) -> Path:
    return lay_out_policy(tmp_path, shared_dir)


@pytest.fixture
async def daemon(bus, root, monkeypatch):
    monkeypatch.setenv("NEXUS_DBUS_ADDRESS", bus.address)
    port = FakePort()
    port.add("work", guest=True)
    port.add("db", guest=True)
    daemon = await start_daemon(root, port)
    await call(daemon, "nexus.ContainerCreate", "web", source="work")
    await call(
        daemon,
        "nexus.ContainerCreate",
        "postgres",
        source="db",
        payload={"ports": [5432, 5433]},
    )
    reply = await call(
        daemon,
        "nexus.LinkRequest",
        "postgres.5432",
        source="work",
        target="name db",
        payload={"from": "web"},
    )
    daemon.test_link = reply["result"]["link"]["id"]
    yield daemon
    await daemon.stop()


async def nexusctl(*argv: str, address: str | None = None) -> Run:
    env = dict(os.environ)
    if address is not None:
        env["NEXUS_DBUS_ADDRESS"] = address
    process = await asyncio.create_subprocess_exec(
        str(NEXUSCTL),
        *argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


class TestReads:
    async def test_status_table(self, daemon) -> None:
        """If nexusd runs with two containers and a link, status prints
        its state, one aligned pair per line."""
        config = daemon.config

        run = await nexusctl("status")

        assert (run.code, run.err) == (0, "")
        assert run.out == (
            "version        0.1.0\n"
            "ready          yes\n"
            "qubes          3\n"
            "guests         2\n"
            "containers     2\n"
            "links          1\n"
            "jobs running   0\n"
            "policy errors  0\n"
            f"links policy   {config.links_policy_file}\n"
            f"database       {config.database}\n"
            f"socket         {config.paths.socket}\n"
        )

    async def test_containers_table(self, daemon) -> None:
        """If containers exist, the table lists each with its ports."""
        run = await nexusctl("containers")

        assert run.code == 0
        assert run.out == (
            "QUBE  NAME      STATE      PORTS\n"
            "db    postgres  requested  5432,5433\n"
            "work  web       requested  -\n"
        )

    async def test_containers_of_qube_as_json(self, daemon) -> None:
        """If a qube is named with --json, only its containers come, as a
        JSON list."""
        run = await nexusctl("containers", "work", "--json")

        assert run.code == 0
        assert [(c["qube"], c["name"], c["ports"]) for c in run.json()] == [
            ("work", "web", [])
        ]

    async def test_links_table_and_json(self, daemon) -> None:
        """If a link exists, the table shows it allowed and the JSON keeps
        blocked_by as null."""
        link_id = daemon.test_link

        table = await nexusctl("links")
        as_json = await nexusctl("--json", "links")

        assert table.out == (
            "ID                    FROM      TO                POLICY\n"
            f"{link_id}  work/web  db/postgres.5432  allowed\n"
        )
        assert as_json.json() == [
            {
                "id": link_id,
                "from": {"qube": "work", "container": "web"},
                "to": {"qube": "db", "container": "postgres", "port": 5432},
                "created_at": as_json.json()[0]["created_at"],
                "blocked_by": None,
            }
        ]

    async def test_links_table_shows_blocker(self, daemon, root) -> None:
        """If an admin rule denies the link, the table names the rule."""
        admin = SimLayout(root).policy_dir / "30-user.policy"
        admin.write_text("nexus.Connect * work db deny\n")

        run = await nexusctl("links")

        assert run.out.splitlines()[1].endswith(f"blocked by {admin}:1")

    async def test_qubes_table(self, daemon) -> None:
        """If qubes exist, they are listed like qvm-ls lists them."""
        run = await nexusctl("qubes")

        assert run.out == (
            "NAME  CLASS    STATE    GUEST  QUOTA  TAGS\n"
            "db    AppVM    Running  yes    -      nexus-guest\n"
            "dom0  AdminVM  Running  no     -      -\n"
            "work  AppVM    Running  yes    -      nexus-guest\n"
        )

    async def test_log_of_one_qube(self, daemon) -> None:
        """If --qube is given, only records about that qube come, a link
        made to it from another qube included."""
        run = await nexusctl("log", "--qube", "db", "--json")

        assert run.code == 0
        assert [(r["via"], r["action"], r["object"]) for r in run.json()] == [
            ("nexus.LinkRequest", "link_created", daemon.test_link),
            ("nexus.ContainerCreate", "container_created", "postgres"),
        ]


class TestPolicy:
    async def test_explain_linked_call(self, daemon) -> None:
        """If a linked Connect is explained, nexusd's line decides it and
        the output says which file and line."""
        ours = daemon.config.links_policy_file

        run = await nexusctl(
            "policy", "explain", "work", "db", "nexus.Connect+postgres.5432"
        )

        assert run.code == 0
        assert run.out == (
            "request      work -> db nexus.Connect+postgres.5432\n"
            "decision     allow\n"
            "target       db\n"
            f"decided by   {ours}:6\n"
            "rule         nexus.Connect +postgres.5432 work db allow\n"
            f"reason       allowed by policy {ours}:6\n"
            "nexusd rule  yes\n"
            "engine       nexusd\n"
            "shadows      none\n"
        )

    async def test_explain_shadowed_as_json(self, daemon, root) -> None:
        """If an admin rule decides first, --json names it and the shadowed
        line of nexusd."""
        admin = SimLayout(root).policy_dir / "30-user.policy"
        admin.write_text("nexus.Connect * @anyvm @anyvm deny\n")

        run = await nexusctl(
            "--json",
            "policy",
            "explain",
            "work",
            "db",
            "nexus.Connect+postgres.5432",
        )

        found = run.json()
        assert run.code == 0
        assert (found["decision"]["action"], found["decision"]["file"]) == (
            "deny",
            str(admin),
        )
        assert found["shadowed"] == [
            {
                "file": str(daemon.config.links_policy_file),
                "line": 6,
                "rule": "nexus.Connect +postgres.5432 work db allow",
            }
        ]

    async def test_explain_bad_service_refused(self, daemon) -> None:
        """If the service breaks the grammar, exit 1 with the reason."""
        run = await nexusctl("policy", "explain", "work", "db", "a b")

        assert (run.code, run.out) == (1, "")
        assert run.err == (
            "nexusctl: service name must be of [A-Za-z0-9._-] [bad_argument]\n"
        )

    async def test_check_clean_then_blocked(self, daemon, root) -> None:
        """If nothing is wrong, check says so and exits 0; if an admin rule
        blocks a link, it lists it and exits 1."""
        clean = await nexusctl("policy", "check")
        admin = SimLayout(root).policy_dir / "30-user.policy"
        admin.write_text("nexus.Connect +postgres.5432 work db deny\n")

        blocked = await nexusctl("policy", "check")

        assert (clean.code, clean.out) == (0, "no problems\n")
        assert blocked.code == 1
        where = f"{admin}:1"
        assert blocked.out == (
            f"SEVERITY  KIND     {'WHERE'.ljust(len(where))}  PROBLEM\n"
            f"error     blocked  {where}  link work -> db"
            f" nexus.Connect+postgres.5432 is blocked: deny by {where}\n"
        )


class TestChanges:
    async def test_container_remove(self, daemon) -> None:
        """If a linked container is removed, the output names it and the
        link that went with it."""
        run = await nexusctl("container", "remove", "db", "postgres")

        assert (run.code, run.err) == (0, "")
        assert run.out == (
            f"removed container db/postgres and 1 link(s): {daemon.test_link}\n"
        )
        assert db_rows(daemon, "links") == []

    async def test_container_remove_unknown(self, daemon) -> None:
        """If the container does not exist, exit 1 and say so on stderr."""
        run = await nexusctl("container", "remove", "db", "nope")

        assert (run.code, run.out) == (1, "")
        assert run.err == (
            "nexusctl: no container 'nope' in qube db [not_found]\n"
        )

    async def test_link_remove_json(self, daemon) -> None:
        """If a link is removed with --json, the reply is JSON."""
        run = await nexusctl("--json", "link", "remove", daemon.test_link)

        assert run.code == 0
        assert run.json() == {"removed": daemon.test_link}


class TestUsage:
    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["frobnicate"],
            ["containers", "a", "b"],
            ["container"],
            ["log", "--limit", "-1"],
            ["log", "--limit", "1001"],
            ["qube", "create", "x"],
            ["completion", "tcsh"],
        ],
    )
    async def test_usage_error_exits_two(self, argv) -> None:
        """If the command line is wrong, exit 2 with usage on stderr and
        nothing on stdout."""
        run = await nexusctl(*argv, address="unix:path=/nonexistent")

        assert (run.code, run.out) == (2, "")
        assert "usage: nexusctl" in run.err

    async def test_no_nexusd_exits_one(self, bus) -> None:
        """If nexusd is not on the bus, exit 1 and say it is not running."""
        run = await nexusctl("status", address=bus.address)

        assert (run.code, run.out) == (1, "")
        assert run.err == (
            "nexusctl: nexusd is not running on this bus [unavailable]\n"
        )

    async def test_bash_completion(self, tmp_path) -> None:
        """If asked for bash completion, a script bash accepts comes out,
        and it completes subcommands from the parser."""
        run = await nexusctl("completion", "bash")
        script = tmp_path / "nexusctl.bash"
        script.write_text(run.out)

        completed = subprocess.run(
            [
                "bash",
                "-c",
                f"source {script}; COMP_WORDS=(nexusctl policy e);"
                " COMP_CWORD=2; _nexusctl; echo ${COMPREPLY[@]}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )

        assert run.code == 0
        assert completed.stdout == "explain\n"


class TestJobs:
    async def test_qube_create_passes_options(self, daemon) -> None:
        """If a qube is created, the operation gets the options by their
        documented names and nexusctl prints the result."""
        seen: dict[str, Any] = {}

        async def create(ctx) -> dict[str, Any]:
            seen.update(ctx.untrusted_options)
            return {"name": "n1", "class": "AppVM"}

        daemon.operations = {"CreateQube": create}
        run = await nexusctl(
            "qube",
            "create",
            "n1",
            "--template",
            "nixos",
            "--label",
            "red",
            "--max-containers",
            "4",
        )

        assert (run.code, run.err) == (0, "")
        assert run.out == "class  AppVM\nname   n1\n"
        assert seen == {
            "name": "n1",
            "template": "nixos",
            "label": "red",
            "class": "AppVM",
            "max_containers": 4,
        }

    async def test_diff_prints_text_lines(self, daemon) -> None:
        """If a job's result has text lines, they are printed as they are."""

        async def diff(ctx) -> dict[str, Any]:
            return {"converged": False, "text": ["a: create", "b: set x"]}

        daemon.operations = {"Diff": diff}
        run = await nexusctl("diff")

        assert (run.code, run.out) == (0, "a: create\nb: set x\n")

    async def test_failed_job_exits_one(self, daemon) -> None:
        """If the job fails, exit 1 with its message and code."""

        async def apply(ctx) -> dict[str, Any]:
            raise Conflict("label of work drifted")

        daemon.operations = {"Apply": apply}
        run = await nexusctl("apply")

        assert (run.code, run.out) == (1, "")
        assert run.err == (
            "nexusctl: Apply: label of work drifted [conflict]\n"
        )

    async def test_template_import_streams_file(self, daemon, tmp_path) -> None:
        """If a template is imported, nexusd reads the image through the
        descriptor nexusctl opened, and --json reports the job."""
        image = tmp_path / "root.img"
        image.write_bytes(bytes(range(256)) * 64)
        got: list[bytes] = []

        async def importer(ctx) -> dict[str, Any]:
            got.append(ctx.image.read())
            return {"name": ctx.untrusted_options["name"]}

        daemon.operations = {"ImportTemplate": importer}
        run = await nexusctl(
            "--json", "template", "import", "nixos", str(image)
        )

        assert run.code == 0
        assert run.json()["state"] == "done"
        assert run.json()["result"] == {"name": "nixos"}
        assert got == [image.read_bytes()]

    async def test_template_import_unreadable_image(self, daemon) -> None:
        """If the image cannot be opened, exit 1 before asking nexusd."""
        run = await nexusctl("template", "import", "t", "/nonexistent.img")

        assert run.code == 1
        assert (
            run.err == "nexusctl: /nonexistent.img: No such file or directory\n"
        )
        assert daemon.dbus.jobs.list() == []

    async def test_jobs_listed_and_cancelled(self, daemon) -> None:
        """If a job runs, jobs lists it, and job cancel ends it."""
        gate = asyncio.Event()

        async def apply(ctx) -> dict[str, Any]:
            await gate.wait()
            return {}

        daemon.operations = {"Apply": apply}
        job = daemon.dbus.jobs.start(
            "Apply", apply, JobContext("", {}, "uid:0/:1.1", "dbus:Apply")
        )

        listed = await nexusctl("jobs", "--json")
        cancel = await nexusctl("job", "cancel", job.id)
        await asyncio.wait_for(job.task, 5)
        unknown = await nexusctl("job", "cancel", "job-999")

        assert [(j["id"], j["state"]) for j in listed.json()] == [
            (job.id, "running")
        ]
        assert (cancel.code, cancel.out) == (0, f"cancelling {job.id}\n")
        assert job.state == "cancelled"
        assert (unknown.code, unknown.err) == (
            1,
            "nexusctl: no job 'job-999' [not_found]\n",
        )

    async def test_progress_bar_on_terminal(self, daemon) -> None:
        """If stderr is a terminal, a job's progress is drawn as a bar."""

        async def apply(ctx) -> dict[str, Any]:
            ctx.progress(0.5, "half")
            await asyncio.sleep(0.3)
            return {"done": True}

        daemon.operations = {"Apply": apply}
        leader, follower = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                str(NEXUSCTL),
                "apply",
                stdout=subprocess.PIPE,
                stderr=follower,
            )
            out, _ = await process.communicate()
            os.close(follower)
            follower = -1
            drawn = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                drawn += chunk
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)

        assert process.returncode == 0
        assert out == b"done  yes\n"
        assert b"Apply [###############---------------]   50 % half" in drawn
