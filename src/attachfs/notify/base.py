"""Notifiers: where versioned notifications go. One small interface, one class per driver.

    log   the notification as one JSON log line on logger attachfs.notifications (default)
    file  JSON lines appended to a file (tests and simple pipelines read it)
    messaging  oslo.messaging (messagingv2) to RabbitMQ: notify/messaging.py
    noop  nothing
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any, Protocol

from attachfs.config import Config

log = logging.getLogger("attachfs.notifications")


class Notifier(Protocol):
    def notify(self, event_type: str, payload: dict[str, Any], priority: str = "INFO") -> None:
        ...


def message(publisher_id: str, event_type: str, payload: dict[str, Any],
            priority: str) -> dict[str, Any]:
    return {"message_id": str(uuid.uuid4()), "publisher_id": publisher_id,
            "event_type": event_type, "priority": priority, "payload": payload,
            "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")}


class LogNotifier:
    def __init__(self, publisher_id: str) -> None:
        self.publisher_id = publisher_id

    def notify(self, event_type: str, payload: dict[str, Any], priority: str = "INFO") -> None:
        log.info("%s", json.dumps(message(self.publisher_id, event_type, payload, priority)))


class FileNotifier:
    def __init__(self, publisher_id: str, path: Path) -> None:
        self.publisher_id, self.path = publisher_id, path
        self._lock = threading.Lock()

    def notify(self, event_type: str, payload: dict[str, Any], priority: str = "INFO") -> None:
        line = json.dumps(message(self.publisher_id, event_type, payload, priority))
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")


class NoopNotifier:
    def notify(self, event_type: str, payload: dict[str, Any], priority: str = "INFO") -> None:
        return None


def make_notifier(config: Config) -> Notifier:
    publisher = f"nova-compute:{config.agent.host}"
    driver = config.notifications.driver
    if driver == "file":
        config.notifications_file.parent.mkdir(parents=True, exist_ok=True)
        return FileNotifier(publisher, config.notifications_file)
    if driver == "noop":
        return NoopNotifier()
    if driver == "messaging":
        from attachfs.notify.messaging import MessagingNotifier  # kombu only when used

        return MessagingNotifier(publisher, config.notifications.transport_url,
                                 config.notifications.topic)
    return LogNotifier(publisher)
