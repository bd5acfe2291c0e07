# SPDX-License-Identifier: MIT
"""Hypothesis strategies of hostile input: service descriptors, payloads,
names, policy lines and qubesd replies, valid ones mutated and random ones.
"""

from __future__ import annotations

import json
import string

from hypothesis import strategies as st

__all__ = [
    "NASTY",
    "edits",
    "headers",
    "mutate",
    "payloads",
    "qube_names",
    "qubesd_bytes",
    "rule_lines",
    "texts",
]

#: The services nexusd serves.
_SERVICES = (
    "nexus.ContainerCreate",
    "nexus.ContainerRemove",
    "nexus.ContainerList",
    "nexus.ContainerReport",
    "nexus.LinkRequest",
    "nexus.LinkRemove",
)

NASTY = [
    b"\0",
    b" ",
    b"  ",
    b"+",
    b"\n",
    b"\r",
    b"\t",
    b"\xff",
    b"\xc3\xb6",
    b"@",
    b":",
    b"*",
    b"=",
    b".",
    b"-",
    b"\x1b[2J",
]
qube_names = st.from_regex(r"\A[a-zA-Z][a-zA-Z0-9_.-]{0,30}\Z")
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
    qube_names,
    st.from_regex(r"\A[a-z][a-z0-9-]{0,12}\Z"),
)


def mutate(data: bytes, changes: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (kind, position, bytes) edits: insert, delete, replace."""
    buf = bytearray(data)
    for kind, pos, chunk in changes:
        at = pos % (len(buf) + 1)
        if kind == 0:
            buf[at:at] = chunk
        elif kind == 1:
            del buf[at : at + len(chunk)]
        else:
            buf[at : at + len(chunk)] = chunk
    return bytes(buf)


edits = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(0, 400),
        st.sampled_from(NASTY) | st.binary(min_size=1, max_size=4),
    ),
    max_size=4,
)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    service = draw(st.sampled_from(sorted(_SERVICES)) | st.text(max_size=20))
    arg = draw(st.from_regex(r"\A[A-Za-z0-9_.-]{0,70}\Z") | texts)
    source = draw(qube_names | texts)
    kind = draw(st.sampled_from(["name", "keyword", "Name", ""]))
    target = draw(
        st.sampled_from(["adminvm", "dom0", "default", "db"])
        | qube_names
        | st.uuids().map(lambda u: f"uuid:{u}")
        | texts
    )
    text = f"{service}+{arg} {source} {kind} {target}"
    raw = text.encode("utf-8", "surrogatepass")
    return mutate(raw, draw(edits))


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(0, 70000),
    st.text(max_size=30),
    st.sampled_from(["running", "stopped", "failed", "a" * 64, "web"]),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=18)
        | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def _objects(draw: st.DrawFn, keys: list[str]) -> bytes:
    """A JSON object over *keys* and others, maybe with a twist."""
    obj = draw(
        st.dictionaries(
            st.sampled_from(keys) | st.text(max_size=8),
            _json_values,
            max_size=len(keys) + 1,
        )
    )
    if "resources" in keys and draw(st.booleans()):
        obj["resources"] = draw(
            st.dictionaries(
                st.sampled_from(["memory_mb", "cpu_weight", "disk"]),
                st.integers(-5, 1 << 21) | _json_scalars,
                max_size=3,
            )
        )
    if "ports" in keys and draw(st.booleans()):
        obj["ports"] = draw(
            st.lists(st.integers(-1, 70000) | _json_scalars, max_size=20)
        )
    text = json.dumps(obj)
    twist = draw(st.integers(0, 7))
    if twist == 1 and len(text) > 2:
        text = text[:-1] + ', "ports": []}'  # a duplicate key, maybe
    elif twist == 2:
        text = text.replace("1", "1.5", 1)
    elif twist == 3:
        text = "\ufeff" + text
    elif twist == 4:
        text = text.replace("0", "NaN", 1)
    raw = text.encode("utf-8", "surrogatepass")
    if twist == 5:
        raw = mutate(raw, draw(edits))
    return raw


payloads = st.one_of(
    st.binary(max_size=300),
    _objects(["ports", "resources", "autostart", "config_sha256"]),
    _objects(["state", "message"]),
    _objects(["from"]),
)


_RULE_WORDS = st.sampled_from(
    [
        "nexus.Connect",
        "*",
        "+",
        "+web.80",
        "@anyvm",
        "@adminvm",
        "@default",
        "@dispvm",
        "@dispvm:work",
        "@dispvm:@tag:x",
        "@tag:nexus-guest",
        "@type:AppVM",
        "@tag:",
        "work",
        "uuid:00000000-0000-0000-0000-000000000000",
        "allow",
        "deny",
        "ask",
        "target=dom0",
        "default_target=work",
        "user=root",
        "notify=yes",
        "autostart=no",
        "notify=maybe",
        "target=@anyvm",
        "x=y",
        "=",
    ]
)


@st.composite
def rule_lines(draw: st.DrawFn) -> str:
    words = draw(st.lists(_RULE_WORDS | texts, min_size=3, max_size=8))
    sep = draw(st.sampled_from([" ", "\t", "  ", " \u00a0 "]))
    text = sep.join(words)
    if draw(st.booleans()):
        raw = mutate(text.encode("utf-8", "surrogatepass"), draw(edits))
        text = raw.decode("utf-8", "replace")
    return text


_wire_fields = st.lists(
    st.sampled_from(
        [b"", b"work", b"domain-start", b"vm", b"\xff", b"a b", b"x=y"]
    )
    | st.binary(max_size=12),
    max_size=8,
)


@st.composite
def qubesd_bytes(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    line = draw(
        st.sampled_from(
            [
                b"work class=AppVM state=Running uuid=%s\n"
                % b"9d3842d7-b104-41c3-be35-ec0cc6021917",
                b"dom0 class=AdminVM state=Running\n",
                b"0\0",
                b"2\0QubesVMNotFoundError\0\0No such domain: 'x'\0",
            ]
        )
    )
    return mutate(line, draw(edits)), draw(_wire_fields)
