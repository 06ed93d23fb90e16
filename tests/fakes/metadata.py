"""Metadata sockets without sockets: which servers are served, and the guests' mount reports."""

from __future__ import annotations

from pathlib import Path

from attachfs.metadata.app import GuestReports


class FakeMetadata:
    def __init__(self, root: Path = Path("/fake/metadata")) -> None:
        self.root = root
        self.served: set[str] = set()
        self.reports = GuestReports()
        self.rung: list[str] = []  # servers whose metadata the agent said may have changed

    def socket_path(self, server_uuid: str) -> Path:
        return self.root / f"{server_uuid}.sock"

    def ensure(self, server_uuid: str) -> Path:
        self.served.add(server_uuid)
        return self.socket_path(server_uuid)

    def changed(self, server_uuid: str) -> None:
        self.rung.append(server_uuid)

    def serving(self, server_uuid: str) -> bool:
        return server_uuid in self.served

    def remove(self, server_uuid: str) -> None:
        self.served.discard(server_uuid)
        self.reports.forget(server_uuid)

    def sync(self, server_uuids: set[str]) -> None:
        for uuid in self.served - server_uuids:
            self.remove(uuid)

    def close(self) -> None:
        self.served.clear()
