"""The browser page: static files (``service/page/``) that call the HTTP API from the browser.

The page is at ``/`` (``index.html``) and its files under ``/ui/``; they hold no data, so they load without the
API key, which the page sends with every call it makes. Every file is served with a content
security policy that lets the page load only from this server: nothing is fetched from anywhere else.
"""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

PAGE_DIR = Path(__file__).with_name("page")
PAGE_PREFIX = "/ui"
PAGE_ROUTES = {"/": f"{PAGE_PREFIX}/index.html"}  # GET path -> the page file that answers it
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
        b"form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),  # revalidated with the ETag, so a new release's page is seen at once
]


class PageFiles:
    """The page's files (Starlette's StaticFiles: ETags, HEAD, no path outside ``PAGE_DIR``) with
    :data:`SECURITY_HEADERS`."""

    def __init__(self, directory: Path = PAGE_DIR):
        self.files = StaticFiles(directory=directory)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
            await send(message)

        await self.files(scope, receive, with_headers)
