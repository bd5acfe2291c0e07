# SPDX-License-Identifier: MIT
"""dom0 calling a qrexec socket service inside a simulated guest.

In a real dom0 ``qrexec-client`` carries the call over vchan; here the
guest's services are Unix sockets under ``SimLayout.vm_rpc_dir``, found in
qrexec's order (``SERVICE+ARG`` first, then ``SERVICE``) and given qrexec's
in-VM header ``SERVICE+ARG dom0\\0``.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from nexusd.qubes.errors import ServiceCallFailed
from nexusd.qubes.wire import CHUNK, check_dest, check_service
from nexusd.sim.layout import SimLayout

__all__ = ["SERVICE_REPLY_MAX", "call_sim_service", "service_paths"]

#: Largest output nexusd takes from a service in a guest.
SERVICE_REPLY_MAX = 1024 * 1024


def service_paths(root: Path, qube: str, service_and_arg: str) -> list[Path]:
    """Where qrexec would look for *service_and_arg* in *qube*, in order.

    Raises:
        InvalidValue: the qube name or the service name is malformed.
    """
    check_dest(qube)
    check_service(service_and_arg)
    rpc_dir = SimLayout(root).vm_rpc_dir(qube)
    service, sep, _ = service_and_arg.partition("+")
    paths = [rpc_dir / service_and_arg] if sep else []
    return [*paths, rpc_dir / service]


def _find_socket(candidates: list[Path]) -> Path | None:
    for path in candidates:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            return path
    return None


async def call_sim_service(
    root: Path,
    qube: str,
    service_and_arg: str,
    payload: bytes,
    timeout: float,
    *,
    reply_max: int = SERVICE_REPLY_MAX,
) -> bytes:
    """Send *payload* to the service, half-close, return its whole output.

    Raises:
        InvalidValue: a malformed qube or service name.
        ServiceCallFailed: no such socket service, the connection failed,
            no EOF within *timeout*, or more than *reply_max* bytes.
    """
    path = _find_socket(service_paths(root, qube, service_and_arg))
    if path is None:
        msg = f"qube {qube!r} offers no service {service_and_arg!r}"
        raise ServiceCallFailed(msg)
    head = service_and_arg if "+" in service_and_arg else f"{service_and_arg}+"
    header = f"{head} dom0\x00".encode("ascii")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(header + payload)
            await writer.drain()
            writer.write_eof()
            untrusted_output = bytearray()
            while chunk := await reader.read(CHUNK):
                untrusted_output += chunk
                if len(untrusted_output) > reply_max:
                    msg = f"{service_and_arg} sent over {reply_max} bytes"
                    raise ServiceCallFailed(msg)
    except TimeoutError:
        msg = f"{service_and_arg} in {qube!r} gave no answer in {timeout:g} s"
        raise ServiceCallFailed(msg) from None
    except OSError as err:
        msg = f"{service_and_arg} in {qube!r} failed: {err.strerror or err}"
        raise ServiceCallFailed(msg) from None
    finally:
        if writer is not None:
            writer.close()
    return bytes(untrusted_output)
