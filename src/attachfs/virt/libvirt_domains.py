"""The libvirt driver's footing (virt/libvirt.py): its connection (opened again when it
dropped), and which domains are its own: a guest's domain is looked up by the server's uuid
(or, with a scope, by the per-host uuid derived from it), and only a domain named
``attachfs-<uuid>`` that carries this driver's owner tag counts. A running one's live XML is
what every observation reads."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from attachfs.virt import libvirt_xml as lx
from attachfs.virt.libvirt_errors import active, gone, msg
from attachfs.virt.libvirt_xml import OWNER_NS, VirtError, domain_name


class LibvirtDomains:
    def __init__(self, uri: str, owner: str | None, scope: str | None) -> None:
        self.uri, self.owner, self.scope = uri, owner, scope
        self._conn: libvirt.virConnect | None = None

    # -- connection ---------------------------------------------------------------------------
    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            self._conn = None
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise VirtError(f"cannot connect to libvirt at {self.uri}: {msg(e)}") from e
        return self._conn

    def _lookup(self, uuid: str) -> libvirt.virDomain | None:
        dom_uuid = lx.domain_uuid(uuid, self.scope)
        try:
            dom = self.conn.lookupByUUIDString(dom_uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise VirtError(f"looking up guest {uuid}: {msg(e)}") from e
        if dom.name() != domain_name(dom_uuid) or not self._owned(dom):
            return None  # not one of ours
        return dom

    @staticmethod
    def _server_in(dom: libvirt.virDomain) -> str | None:
        """The server uuid a per-host domain carries in its metadata."""
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, lx.SERVER_NS, 0)
        except libvirt.libvirtError:
            return None
        return ET.fromstring(xml).get("uuid") or None

    def _owned(self, dom: libvirt.virDomain) -> bool:
        if self.owner is None:
            return True
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
        except libvirt.libvirtError:
            return False  # no owner tag (or the guest vanished): not ours
        return (ET.fromstring(xml).text or "") == self.owner

    def _live_xml(self, uuid: str, dom: libvirt.virDomain | None = None) -> str | None:
        """The running guest's live XML; None when it is not ours or not running."""
        dom = dom if dom is not None else self._lookup(uuid)
        if dom is None or not active(dom):
            return None
        try:
            return str(dom.XMLDesc(0))
        except libvirt.libvirtError as e:
            if gone(e):
                return None
            raise VirtError(f"reading guest {uuid}: {msg(e)}") from e

    def _running(self, uuid: str, doing: str) -> tuple[libvirt.virDomain, str]:
        dom = self._lookup(uuid)
        xml = self._live_xml(uuid, dom) if dom is not None else None
        if dom is None or xml is None:
            raise VirtError(f"{doing}: guest {uuid} is not running")
        return dom, xml

