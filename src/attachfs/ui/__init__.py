"""The web console at /ui/: static pages (ui/static) that use the compute API with the user's own
token, like any other client; nothing privileged is behind them.

What the server adds: `GET /ui/auth` (which login the page shows) and, with Keystone,
`POST /ui/login`, which asks Keystone for a token with the user's name, password and project
(the browser cannot reach Keystone itself: another origin) and hands it to the page. Every
other request of the console goes to the compute API with that token in X-Auth-Token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from attachfs.ui.login import router as login_router

STATIC = Path(__file__).with_name("static")
PREFIX = "/ui"


# The pages run only their own script and style, talk only to this origin, and are never
# framed by another site (no inline script anywhere: every value goes in through textContent).
PAGE_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                 b"form-action 'self'; object-src 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class ConsoleFiles(StaticFiles):
    """The pages and their script and style (`/ui/` is index.html), with PAGE_HEADERS."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *PAGE_HEADERS]}
            await send(message)

        await super().__call__(scope, receive, sending)


def static_files() -> StaticFiles:
    return ConsoleFiles(directory=STATIC, html=True)


router = APIRouter()


@router.get(PREFIX, include_in_schema=False)
def to_console() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/", status_code=308)


router.routes.extend(login_router.routes)
