"""Notifications over oslo.messaging (driver messagingv2), as the compute service sends them:
exchange from `control_exchange` (default "openstack"), topic `versioned_notifications` with
routing keys `<topic>.info` / `<topic>.error`."""

from __future__ import annotations

import logging
from typing import Any

import oslo_messaging
from oslo_config import cfg

log = logging.getLogger(__name__)


class MessagingNotifier:
    def __init__(self, publisher_id: str, transport_url: str, topic: str) -> None:
        conf = cfg.ConfigOpts()
        conf([], project="attachfs")
        self.transport = oslo_messaging.get_notification_transport(conf, url=transport_url)
        self._notifier = oslo_messaging.Notifier(self.transport, publisher_id=publisher_id,
                                                 driver="messagingv2", topics=[topic])

    def notify(self, event_type: str, payload: dict[str, Any], priority: str = "INFO") -> None:
        send = self._notifier.error if priority.upper() == "ERROR" else self._notifier.info
        try:
            send({}, event_type, payload)
        except Exception as exc:  # noqa: BLE001 - a lost notification must not fail the step
            log.error("notification %s could not be sent: %s", event_type, exc)

    def close(self) -> None:
        self.transport.cleanup()
