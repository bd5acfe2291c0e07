# SPDX-License-Identifier: MIT
"""The simulated qrexec router: policy, headers, relays, exit statuses."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import init_machine
from nexusd.sim.model import Dom0Model
from nexusd.sim.qubesd import serve_qubesd
from nexusd.sim.router import (
    EXIT_NOT_FOUND,
    EXIT_PROBLEM,
    EXIT_REFUSED,
    policy_decision,
    policy_permits,
    route_call,
)
from nexusd.sim.settings import Settings

GUARD = 10
TEST_POLICY = """\
test.Echo * work @adminvm allow
test.Echo * work db allow
test.Ask * work db ask
test.NoStart * work db allow autostart=no
"""


@pytest.fixture
def layout(tmp_path: Path) -> SimLayout:
    root = tmp_path / "dom0"
    init_machine(root)
    layout = SimLayout(root)
    (layout.policy_dir / "20-test.policy").write_text(TEST_POLICY)
    return layout


class Service:
    """A socket service that records what it got and answers ``ok:``."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def _handle(self, reader, writer) -> None:
        data = await reader.read()
        self.received.append(data)
        writer.write(b"ok:" + data)
        await writer.drain()
        writer.close()

    async def listen(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.server = await asyncio.start_unix_server(self._handle, str(path))

    async def listen_tcp(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def service():
    svc = Service()
    yield svc
    await svc.close()


async def call(
    layout: SimLayout, source: str, target: str, name: str, data: bytes
) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    status = await asyncio.wait_for(
        route_call(layout, source, target, name, data, out, stderr=err),
        GUARD,
    )
    return status, out.getvalue(), err.getvalue()


class TestPolicyDecision:
    def test_demo_admin_rule_decides_the_link(self, layout: SimLayout) -> None:
        """If work asks for db's postgres.5432, the admin's 30-user rule
        allows it to dom0 and is named with its line."""
        decision = policy_decision(
            layout, "work", "db", "nexus.LinkRequest+postgres.5432"
        )

        assert decision["action"] == "allow"
        assert decision["target"] == "dom0"
        assert decision["file"] == str(layout.policy_dir / "30-user.policy")
        assert decision["line"] == 6

    def test_non_guest_is_denied_by_shipped_policy(
        self, layout: SimLayout
    ) -> None:
        """If a qube without nexus-guest asks for a container, the shipped
        50-nexus.policy denies it."""
        decision = policy_decision(
            layout, "personal", "@adminvm", "nexus.ContainerCreate+web"
        )

        assert decision["action"] == "deny"
        assert decision["file"] == str(layout.policy_dir / "50-nexus.policy")

    def test_bad_service_name_is_denied(self, layout: SimLayout) -> None:
        """If the service name has a character qrexec does not carry, deny."""
        decision = policy_decision(layout, "work", "@adminvm", "test.E cho")

        assert decision["action"] == "deny"


class TestDom0Services:
    async def test_allowed_call_gets_keyword_header(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If the call is allowed to @adminvm, the service first gets
        ``SERVICE+ARG SOURCE keyword adminvm\\0`` then stdin, and its reply
        is stdout with exit status 0."""
        await service.listen(layout.rpc_dirs[-1] / "test.Echo")

        status, out, _ = await call(
            layout, "work", "@adminvm", "test.Echo+x", b"payload"
        )

        assert status == 0
        assert service.received == [
            b"test.Echo+x work keyword adminvm\x00payload"
        ]
        assert out == b"ok:" + service.received[0]

    async def test_no_argument_keeps_the_plus_and_name_target(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If there is no argument and the target is named dom0, the header is
        ``SERVICE+ SOURCE name dom0``."""
        await service.listen(layout.rpc_dirs[-1] / "test.Echo")

        status, _, _ = await call(layout, "work", "dom0", "test.Echo", b"")

        assert status == 0
        assert service.received == [b"test.Echo+ work name dom0\x00"]

    async def test_refused_call_exits_126(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If policy denies, exit status 126, 'Request refused' on stderr, and
        the service is never contacted."""
        await service.listen(layout.rpc_dirs[-1] / "test.Echo")

        status, out, err = await call(
            layout, "personal", "@adminvm", "test.Echo", b"x"
        )

        assert status == EXIT_REFUSED
        assert err == "Request refused\n"
        assert out == b""
        assert service.received == []

    async def test_missing_service_exits_127(self, layout: SimLayout) -> None:
        """If the allowed service does not exist in dom0, exit status 127."""
        status, _, _ = await call(layout, "work", "@adminvm", "test.Echo", b"")

        assert status == EXIT_NOT_FOUND

    async def test_service_with_argument_wins_in_any_folder(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If SERVICE+ARG exists in a later folder and SERVICE in an earlier
        one, SERVICE+ARG is used (qrexec's lookup order)."""
        await service.listen(layout.rpc_dirs[-1] / "test.Echo+x")
        layout.rpc_dirs[0].mkdir(parents=True, exist_ok=True)
        (layout.rpc_dirs[0] / "test.Echo").symlink_to("/nonexistent")

        status, _, _ = await call(
            layout, "work", "@adminvm", "test.Echo+x", b""
        )

        assert status == 0
        assert len(service.received) == 1

    async def test_symlink_to_socket_is_followed(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If the entry is a symlink to a socket (as nexusd registers), the
        socket behind it gets the call."""
        await service.listen(layout.nexusd_run_dir / "other.sock")
        (layout.rpc_dirs[-1] / "test.Echo").symlink_to(
            layout.nexusd_run_dir / "other.sock"
        )

        status, _, _ = await call(layout, "work", "@adminvm", "test.Echo", b"")

        assert status == 0
        assert service.received == [b"test.Echo+ work keyword adminvm\x00"]

    async def test_halted_caller_is_started(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If the calling qube is halted, it is started (only running qubes
        call), and the change is saved."""
        await service.listen(layout.rpc_dirs[-1] / "test.Echo")

        await call(layout, "work", "@adminvm", "test.Echo", b"")

        assert Dom0Model.load(layout).domains["work"].power_state == "Running"


class TestQubeServices:
    async def test_socket_service_gets_two_token_header(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If the target is a qube, its socket service gets
        ``SERVICE+ARG SOURCE\\0`` and the halted target is started."""
        await service.listen(layout.vm_rpc_dir("db") / "test.Echo+5432")

        status, out, _ = await call(
            layout, "work", "db", "test.Echo+5432", b"hi"
        )

        assert status == 0
        assert service.received == [b"test.Echo+5432 work\x00hi"]
        assert out == b"ok:test.Echo+5432 work\x00hi"
        assert Dom0Model.load(layout).domains["db"].power_state == "Running"

    async def test_tcp_symlink_relays_without_header(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If the qube's service is a /dev/tcp/127.0.0.1/PORT symlink, bytes
        go to that port with no header, both ways."""
        port = await service.listen_tcp()
        rpc = layout.vm_rpc_dir("db")
        (rpc / "test.Echo+pg").symlink_to(f"/dev/tcp/127.0.0.1/{port}")

        status, out, _ = await call(layout, "work", "db", "test.Echo+pg", b"hi")

        assert status == 0
        assert service.received == [b"hi"]
        assert out == b"ok:hi"

    async def test_tcp_symlink_to_other_host_is_refused(
        self, layout: SimLayout
    ) -> None:
        """If a /dev/tcp symlink names a host other than loopback, nothing is
        connected and the status is 125."""
        rpc = layout.vm_rpc_dir("db")
        (rpc / "test.Echo").symlink_to("/dev/tcp/192.0.2.1/80")

        status, out, _ = await call(layout, "work", "db", "test.Echo", b"x")

        assert status == EXIT_PROBLEM
        assert out == b""

    async def test_no_autostart_rule_refuses_halted_target(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If the rule says autostart=no and the target is halted, the call
        is refused and the target stays halted."""
        await service.listen(layout.vm_rpc_dir("db") / "test.NoStart")

        status, _, _ = await call(layout, "work", "db", "test.NoStart", b"")

        assert status == EXIT_REFUSED
        assert Dom0Model.load(layout).domains["db"].power_state == "Halted"
        assert service.received == []


class TestAsk:
    async def test_ask_is_denied_by_default(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If policy says ask and nothing was set, the answer is deny."""
        await service.listen(layout.vm_rpc_dir("db") / "test.Ask")

        status, _, _ = await call(layout, "work", "db", "test.Ask", b"")

        assert status == EXIT_REFUSED
        assert service.received == []

    async def test_ask_answered_allow_goes_through(
        self, layout: SimLayout, service: Service
    ) -> None:
        """If the settings answer ask with allow, the call reaches the
        intended target."""
        Settings(ask="allow").save(layout)
        await service.listen(layout.vm_rpc_dir("db") / "test.Ask")

        status, _, _ = await call(layout, "work", "db", "test.Ask", b"")

        assert status == 0
        assert service.received == [b"test.Ask+ work\x00"]


class TestHostileRequests:
    @pytest.mark.parametrize(
        ("source", "target", "name"),
        [
            ("work", "@adminvm", "test.Echo+a b"),
            ("work", "@adminvm", "+test.Echo"),
            ("work", "@adminvm", ""),
            ("work", "@adminvm", "t" * 256),
            ("work", "db\x00", "test.Echo"),
            ("nosuchqube", "@adminvm", "test.Echo"),
            ("dom0", "@adminvm", "test.Echo"),
        ],
    )
    async def test_malformed_call_is_refused(
        self,
        layout: SimLayout,
        service: Service,
        source: str,
        target: str,
        name: str,
    ) -> None:
        """If the name, target or source is not one qrexec carries from a
        qube, the call is refused (126) and nothing is contacted."""
        await service.listen(layout.rpc_dirs[-1] / "test.Echo")

        status, _, _ = await call(layout, source, target, name, b"")

        assert status == EXIT_REFUSED
        assert service.received == []


ADMIN_POLICY = """\
admin.vm.List * work @adminvm allow target=dom0
admin.vm.List * work @tag:nexus-guest allow target=dom0
admin.Events * work @adminvm allow target=dom0
admin.Events * work @tag:nexus-guest allow target=dom0
"""


@pytest.fixture
async def admin_qubesd(layout: SimLayout):
    (layout.policy_dir / "25-admin.policy").write_text(ADMIN_POLICY)
    model = Dom0Model.load(layout)
    server = await serve_qubesd(
        model,
        layout.qubesd_socket,
        permit=policy_permits(layout, model.system_info),
    )
    yield model
    await server.close()


class TestAdminApiThroughQrexec:
    async def test_vm_list_from_a_qube_is_filtered_by_policy(
        self, layout: SimLayout, admin_qubesd: Dom0Model
    ) -> None:
        """If work lists qubes through qrexec, qubesd gets the call with
        work as source and answers only the qubes policy lets it see."""
        status, out, _ = await call(
            layout, "work", "@adminvm", "admin.vm.List", b""
        )

        names = [line.split(" ")[0] for line in out[2:].decode().splitlines()]
        assert status == 0
        assert out.startswith(b"0\x00")
        assert names == ["dom0", "db", "work"]

    async def test_events_from_a_qube_are_filtered_by_policy(
        self, layout: SimLayout, admin_qubesd: Dom0Model
    ) -> None:
        """If work follows admin.Events, it gets events of nexus guests and
        not of other qubes."""
        reader, writer = await asyncio.open_unix_connection(
            str(layout.qubesd_socket)
        )
        writer.write(b"admin.Events+ work name dom0\x00")
        writer.write_eof()
        first = await asyncio.wait_for(reader.readexactly(27), GUARD)

        admin_qubesd.add_tag(admin_qubesd.domains["personal"], "seen-not")
        admin_qubesd.add_tag(admin_qubesd.domains["db"], "seen")
        message = await asyncio.wait_for(reader.readuntil(b"\x00\x00"), GUARD)
        writer.close()

        assert first == b"1\x00\x00connection-established\x00\x00"
        assert (
            message == b"1\x00db\x00domain-tag-add:seen\x00tag\x00seen\x00\x00"
        )

    async def test_admin_call_without_policy_is_refused(
        self, layout: SimLayout, admin_qubesd: Dom0Model
    ) -> None:
        """If no rule allows an Admin API method to the qube, 126."""
        status, _, _ = await call(
            layout, "personal", "@adminvm", "admin.vm.List", b""
        )

        assert status == EXIT_REFUSED
