# SPDX-License-Identifier: MIT
"""The simulated qubes (one class per qubesd class) and the system holder.

A holder keeps only the properties that were set explicitly; everything
else comes from the defaults in :mod:`nexusd.sim.props`, so ``default=True``
in a reply means the same as in qubesd. Changes go through
:class:`nexusd.sim.model.Dom0Model`, which checks them and fires events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from nexusd.sim.propcheck import NoValue, PropDef
from nexusd.sim.props import (
    ADMINVM_PROPS,
    APPVM_PROPS,
    DISPVM_PROPS,
    GLOBAL_PROPS,
    STANDALONEVM_PROPS,
    TEMPLATEVM_PROPS,
)

if TYPE_CHECKING:
    from nexusd.sim.model import Dom0Model

__all__ = [
    "QUBE_CLASSES",
    "AdminVM",
    "AppVM",
    "DispVM",
    "GlobalProps",
    "Holder",
    "Qube",
    "StandaloneVM",
    "TemplateVM",
    "wire_str",
]

#: Volumes every qube of a QubesVM class has, in qubesd's order.
VOLUME_NAMES = ("root", "private", "volatile", "kernel")
#: Default volume sizes (qubes/config.py: root_img_size, private_img_size).
ROOT_IMG_SIZE = 10 * 1024 * 1024 * 1024
PRIVATE_IMG_SIZE = 2 * 1024 * 1024 * 1024


def wire_str(value: Any) -> str:
    """Render a value as qubesd's ``str()`` does in events and replies."""
    if value is None:
        return "None"
    return str(value)


class Holder:
    """Something with qubesd properties: a qube or the system."""

    klass: ClassVar[str] = ""
    PROPS: ClassVar[dict[str, PropDef]] = {}

    def __init__(self, app: Dom0Model) -> None:
        """Start with no property set explicitly."""
        self.app: Dom0Model = app
        self.values: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """How the holder appears in messages and event subjects."""
        return str(self.get("name"))

    def get(self, name: str) -> Any:
        """Return the value of property *name*, explicit or default.

        Raises:
            NoValue: unset and without a default.
            KeyError: no such property on this holder.
        """
        prop = self.PROPS[name]
        if name in self.values:
            return self.values[name]
        if prop.default is None:
            raise NoValue(name)
        return prop.default(self)

    def get_or_none(self, name: str) -> Any:
        """Like :meth:`get`, but ``None`` for no value or no property."""
        if name not in self.PROPS:
            return None
        try:
            return self.get(name)
        except NoValue:
            return None

    def is_default(self, name: str) -> bool:
        """Whether property *name* is at its default."""
        return name not in self.values

    def serialize(self, name: str) -> str:
        """``default=<bool> type=<T> <value>`` as ``property.Get`` answers."""
        prop = self.PROPS[name]
        try:
            value = self.get(name)
        except NoValue:
            return f"default=True type={prop.kind} "
        text = "" if value is None else str(value)
        return f"default={self.is_default(name)!s} type={prop.kind} {text}"

    # The helpers below are what property defaults consult.

    def template_qube(self) -> Qube | None:
        """The qube's template, if it has one."""
        return None

    def netvm_qube(self) -> Qube | None:
        """The qube's network qube, if any."""
        return None

    def is_networked(self) -> bool:
        """Whether the holder has or provides network."""
        return False

    def is_running(self) -> bool:
        """Whether the holder counts as running."""
        return False

    def check_with_template(self, feature: str) -> str | None:
        """A feature's value here or on the template chain, or ``None``."""
        return None

    @property
    def features(self) -> dict[str, str]:
        """Features (none on the system holder)."""
        return {}


class GlobalProps(Holder):
    """The system's global properties (qubesd's ``Qubes`` object)."""

    klass = "Qubes"
    PROPS = GLOBAL_PROPS

    @property
    def name(self) -> str:
        """``str(app)`` in qubesd."""
        return "Qubes"


class Qube(Holder):
    """A qube: properties, features, tags, power state and volumes."""

    def __init__(self, app: Dom0Model) -> None:
        """A halted qube without features or tags."""
        super().__init__(app)
        self._features: dict[str, str] = {}
        self.tags: set[str] = set()
        self.power_state = "Halted"
        self.xid = -1
        self.start_time: str | None = None
        self.volume_sizes: dict[str, int] = {}

    @property
    def features(self) -> dict[str, str]:
        """Features in insertion order, as ``feature.List`` answers."""
        return self._features

    def template_qube(self) -> Qube | None:
        """The qube's template, if it has one."""
        name = self.get_or_none("template")
        return self.app.domains.get(name) if name else None

    def netvm_qube(self) -> Qube | None:
        """The qube's network qube, if any."""
        name = self.get_or_none("netvm")
        return self.app.domains.get(name) if name else None

    def is_networked(self) -> bool:
        """Whether the qube has or provides network."""
        return bool(self.get_or_none("provides_network")) or (
            self.netvm_qube() is not None
        )

    def is_running(self) -> bool:
        """Running, as qubesd's ``is_running`` (not halted nor paused)."""
        return self.power_state in ("Running", "Transient", "Halting")

    def is_halted(self) -> bool:
        """Whether the qube is halted."""
        return self.power_state == "Halted"

    def check_with_template(self, feature: str) -> str | None:
        """A feature's value here or on the template chain, or ``None``."""
        subject: Qube | None = self
        while subject is not None:
            if feature in subject.features:
                return subject.features[feature]
            subject = subject.template_qube()
        return None

    def volume_names(self) -> tuple[str, ...]:
        """Names of the qube's volumes (none for dom0)."""
        return VOLUME_NAMES

    def default_volume_size(self, volume: str) -> int:
        """A new volume's size, by qubesd's defaults for the class."""
        if volume == "private":
            return PRIVATE_IMG_SIZE
        if volume == "volatile":
            return ROOT_IMG_SIZE
        if volume == "root" and self.klass in ("TemplateVM", "StandaloneVM"):
            return ROOT_IMG_SIZE
        return 0

    def volume_info(self, volume: str) -> dict[str, str]:
        """``admin.vm.volume.Info`` fields of *volume*, in qubesd's order."""
        own = volume in ("private", "volatile") or (
            volume == "root" and self.klass in ("TemplateVM", "StandaloneVM")
        )
        save_on_stop = volume == "private" or (
            volume == "root" and self.klass in ("TemplateVM", "StandaloneVM")
        )
        if self.klass == "DispVM" and volume == "private":
            save_on_stop, own = False, False
        snap_on_start = volume != "kernel" and not own
        source = ""
        template = self.template_qube()
        if snap_on_start and template is not None:
            source = template.volume_vid(volume)
        if volume == "kernel":
            pool, vid = "linux-kernel", str(self.get_or_none("kernel") or "")
        else:
            pool, vid = "varlibqubes", self.volume_vid(volume)
        size = self.volume_sizes.get(volume, self.default_volume_size(volume))
        path = self.app.layout.vm_volume_dir(self.name) / f"{volume}.img"
        fields = {
            "pool": pool,
            "vid": vid,
            "size": str(size),
            "usage": str(_usage(path)),
            "rw": str(volume != "kernel"),
            "source": source,
            "path": str(path),
            "save_on_stop": str(save_on_stop),
            "snap_on_start": str(snap_on_start),
            "revisions_to_keep": "1",
            "ephemeral": "False",
            "is_outdated": "False",
        }
        return fields

    def volume_vid(self, volume: str) -> str:
        """The volume's id in the ``varlibqubes`` file pool."""
        folder = "vm-templates" if self.klass == "TemplateVM" else "appvms"
        return f"{folder}/{self.name}/{volume}"


def _usage(path: Any) -> int:
    try:
        return int(path.stat().st_blocks) * 512
    except OSError:
        return 0


class AdminVM(Qube):
    """dom0: always running, no volumes, fixed name, qid and uuid."""

    klass = "AdminVM"
    PROPS = ADMINVM_PROPS

    def __init__(self, app: Dom0Model) -> None:
        """dom0 is running from the start."""
        super().__init__(app)
        self.power_state = "Running"
        self.xid = 0

    def volume_names(self) -> tuple[str, ...]:
        """dom0 has no volumes qubesd manages."""
        return ()


class TemplateVM(Qube):
    """A template: the root volume of the qubes based on it."""

    klass = "TemplateVM"
    PROPS = TEMPLATEVM_PROPS


class AppVM(Qube):
    """A qube based on a TemplateVM."""

    klass = "AppVM"
    PROPS = APPVM_PROPS


class StandaloneVM(Qube):
    """A qube with its own root volume."""

    klass = "StandaloneVM"
    PROPS = STANDALONEVM_PROPS


class DispVM(Qube):
    """A disposable, based on an AppVM with ``template_for_dispvms``."""

    klass = "DispVM"
    PROPS = DISPVM_PROPS


#: The classes the simulated qubesd can hold, by qubesd's class name.
QUBE_CLASSES: dict[str, type[Qube]] = {
    cls.klass: cls for cls in (AdminVM, TemplateVM, AppVM, StandaloneVM, DispVM)
}
