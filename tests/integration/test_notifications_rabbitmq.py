"""Versioned notifications through the real RabbitMQ on this machine (127.0.0.1:5672), sent by
the agent's own attach/detach steps and received by a real oslo.messaging listener."""

from __future__ import annotations

import os
import queue
import socket
import uuid
from pathlib import Path
from typing import Any

import oslo_messaging
import pytest
from oslo_config import cfg

from attachfs.agent.attachments import Attachments
from attachfs.agent.reconciler import Reconciler
from attachfs.config import load_config
from attachfs.db.tables import Server, ShareMapping
from attachfs.metadata.sockets import MetadataSockets
from attachfs.notify.messaging import MessagingNotifier
from attachfs.service import open_parts
from attachfs.storage.bind import BindConnector
from tests.conftest import make_image_dir

URL = os.environ.get("ATTACHFS_TEST_RABBIT", "rabbit://guest:guest@127.0.0.1:5672/")


def _rabbit_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _rabbit_up(), reason="RabbitMQ is not running on :5672")


class Collector:
    def __init__(self) -> None:
        self.got: queue.Queue[tuple[str, str, dict[str, Any], str]] = queue.Queue()

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
             metadata: Any) -> None:
        self.got.put(("INFO", event_type, payload, publisher_id))

    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
              metadata: Any) -> None:
        self.got.put(("ERROR", event_type, payload, publisher_id))

    def take(self, n: int) -> list[tuple[str, str, dict[str, Any], str]]:
        return [self.got.get(timeout=20) for _ in range(n)]


@pytest.fixture
def listener() -> Any:
    topic = f"attachfs_test_{uuid.uuid4().hex[:8]}"
    conf = cfg.ConfigOpts()
    conf([], project="attachfs-test")
    transport = oslo_messaging.get_notification_transport(conf, url=URL)
    collector = Collector()
    server = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=topic)], [collector], executor="threading")
    server.start()
    try:
        yield topic, collector
    finally:
        server.stop()
        server.wait()
        transport.cleanup()


def test_attach_and_detach_notifications_reach_rabbitmq(listener: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent's steps use libvirt (qemu:///system) and need root")
    from attachfs.virt.libvirt import LibvirtDriver

    topic, collector = listener
    config = load_config(None, {"state_dir": str(tmp_path / "state"), "agent.host": "nhost",
                                "images.dir": str(make_image_dir(tmp_path))})
    parts = open_parts(config)
    notifier = MessagingNotifier("nova-compute:nhost", URL, topic)
    virt = LibvirtDriver(owner=f"notif-test-{uuid.uuid4().hex[:6]}")
    steps = Attachments(config, parts.db, parts.builtin,
                        {"LOCAL": BindConnector(config.storage_root, config.mount_root)}, virt,
                        MetadataSockets(parts.db, config.metadata_socket_dir), notifier)
    try:
        good, bad = str(uuid.uuid4()), str(uuid.uuid4())
        for share in (good, bad):
            parts.builtin.create_dir(share, 1)
        with parts.db.session() as s:
            from attachfs.db.tables import Share

            for share in (good, bad):
                s.add(Share(uuid=share, name=share, project_id="p1", user_id="alice",
                            size_gib=1, scope="instance", status="available"))
            server = Server(uuid=str(uuid.uuid4()), name="n1", project_id="p1", user_id="alice",
                            host="nhost", flavor_id="1", image_id="i", vcpus=1, memory_mib=128,
                            vm_state="stopped", power_intent="off", meta={})
            s.add(server)
            s.flush()
            rows = [ShareMapping(uuid=str(uuid.uuid4()), instance_uuid=server.uuid,
                                 share_id=share, status="attaching", tag=f"t{i}",
                                 export_location=f"local:{config.storage_root / share}",
                                 share_proto="LOCAL", user_id="carol", project_id="p1",
                                 request_id=f"req-{i}") for i, share in enumerate((good, bad))]
            s.add_all(rows)
        parts.builtin.delete_dir(bad)  # forced failure: the share's filesystem is gone

        # the agent's own pass: both cold attaches in one plan (grants, then records)
        reconciler = Reconciler(config, parts.db, steps, lambda: [])
        reconciler.reconcile(server.uuid)
        with parts.db.session() as s:
            ok, failed = s.get(ShareMapping, rows[0].id), s.get(ShareMapping, rows[1].id)
            assert ok is not None and ok.status == "inactive"
            assert failed is not None and failed.status == "error"
            ok.status = "detaching"
        reconciler.reconcile(server.uuid)

        got = collector.take(6)
        kinds = [(prio, event, payload["nova_object.data"]["share_id"])
                 for prio, event, payload, _ in got]
        assert kinds == [
            ("INFO", "instance.share_attach.start", good),
            ("INFO", "instance.share_attach.start", bad),
            ("ERROR", "instance.share_attach.error", bad),
            ("INFO", "instance.share_attach.end", good),
            ("INFO", "instance.share_detach.start", good),
            ("INFO", "instance.share_detach.end", good),
        ]
        for _prio, _event, payload, publisher in got:
            assert publisher == "nova-compute:nhost"
            assert payload["nova_object.name"] == "InstanceActionSharePayload"
            data = payload["nova_object.data"]
            assert data["uuid"] == server.uuid and data["action_initiator_user"] == "carol"
        error = got[2][2]["nova_object.data"]
        assert error["share_id"] == bad and "missing" in \
            error["fault"]["nova_object.data"]["exception_message"]
    finally:
        notifier.close()
        virt.close()
        parts.db.dispose()
