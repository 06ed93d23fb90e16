"""A stub of the network service (Neutron API v2.0) for Nova with `"networks": "none"`.

Nova 34 still calls the network service on server show and delete (ports, floating IPs, security
groups, extensions); empty lists are enough for the share-attachment calls, which never call it.
This is NOT a network service: every GET of a collection answers an empty list, a GET of one
resource 404, and writes 404 too (Nova makes none with "networks": "none").

    python netstub.py --port 19696 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        host = self.headers.get("Host", "127.0.0.1")
        if path in ("", "/"):
            self._send(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"href": f"http://{host}/v2.0/", "rel": "self"}]}]})
            return
        m = re.fullmatch(r"/v2\.0(?:/([a-z0-9_-]+(?:/[a-z0-9_-]+)*?))?(?:\.json)?", path)
        if m is None:
            self._send(404, {"NeutronError": {"type": "HTTPNotFound", "message": path, "detail": ""}})
            return
        if not m.group(1):
            self._send(200, {"resources": []})
            return
        parts = m.group(1).split("/")
        if len(parts) == 1:
            self._send(200, {parts[0].replace("-", "_"): []})
        else:
            self._send(404, {"NeutronError": {"type": "NotFound", "message": path, "detail": ""}})

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._send(404, {"NeutronError": {"type": "NotFound", "message": "stub", "detail": ""}})

    do_POST = do_PUT = do_DELETE = _refuse  # noqa: N815

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    ThreadingHTTPServer((a.host, a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
