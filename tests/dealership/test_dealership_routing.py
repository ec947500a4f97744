"""CaseInsensitivePaths on its own: which path the router is handed (pure: no database, no Redis, no server)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from dealership.routing import CaseInsensitivePaths


def _endpoint() -> None:
    raise AssertionError("never called: only the paths are compared")


def _middleware() -> CaseInsensitivePaths:
    app = FastAPI()
    items = APIRouter(prefix="/api/items")
    items.add_api_route("/search", _endpoint, methods=["GET"])
    items.add_api_route("/{name}", _endpoint, methods=["GET", "DELETE"])
    items.add_api_route("/{id:int}/Parts", _endpoint, methods=["GET"])  # a capital in the template is kept
    app.include_router(items)
    return CaseInsensitivePaths(app, app.router.routes)


@pytest.mark.parametrize(
    ("method", "sent", "seen"),
    [
        ("GET", "/API/Items/SEARCH", "/api/items/search"),
        ("GET", "/api/items/search", "/api/items/search"),
        ("DELETE", "/API/ITEMS/Search", "/api/items/Search"),  # DELETE /search does not exist: "Search" is a name
        ("GET", "/Api/Items/MiXeD", "/api/items/MiXeD"),
        ("GET", "/api/items/7/PARTS", "/api/items/7/Parts"),
        ("POST", "/API/items/search", "/api/items/search"),  # no route takes POST: the router's 405 as for lower case
        ("GET", "/API/Items/Search//", "/api/items/search//"),  # kept: the router redirects to /api/items/search
        ("GET", "/API/Unknown", "/API/Unknown"),
        ("GET", "/api/items/a/b", "/api/items/a/b"),
        ("GET", "/DOCS", "/docs"),
    ],
)
def test_literal_segments_take_the_templates_spelling_and_values_stay(method: str, sent: str, seen: str) -> None:
    assert _middleware().canonical_path(sent, method) == seen


def test_a_root_path_prefix_is_left_alone() -> None:
    middleware = _middleware()

    assert middleware.canonical_path("/Prefix/API/Items/x", "GET", "/Prefix") == "/Prefix/api/items/x"
    assert middleware.canonical_path("/API/Items/x", "GET", "/Prefix") == "/api/items/x"  # path without the root


def test_plain_starlette_routes_and_routes_added_later_are_matched() -> None:
    routes = [Route("/Health", _endpoint)]
    middleware = CaseInsensitivePaths(FastAPI(), routes)
    assert middleware.canonical_path("/health") == "/Health"

    routes.append(Route("/ready", _endpoint))

    assert middleware.canonical_path("/READY") == "/ready"


async def _call(middleware_of: Any, scope: Scope) -> Scope:
    seen: list[Scope] = []

    async def inner(scope: Scope, _receive: Receive, _send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        raise AssertionError("not read")

    async def send(_message: Message) -> None:
        raise AssertionError("not sent")

    await middleware_of(inner)(scope, receive, send)
    assert len(seen) == 1
    return seen[0]


async def test_only_http_and_websocket_paths_are_rewritten_and_the_query_never() -> None:
    routes = [Route("/api/items/{name}", _endpoint)]

    def middleware_of(inner: Any) -> CaseInsensitivePaths:
        return CaseInsensitivePaths(inner, routes)

    http: Scope = {"type": "http", "method": "GET", "path": "/API/Items/X", "query_string": b"Term=Ab"}
    socket: Scope = {"type": "websocket", "path": "/API/ITEMS/y"}
    lifespan: Scope = {"type": "lifespan"}

    assert await _call(middleware_of, http) == {**http, "path": "/api/items/X"}
    assert http["path"] == "/API/Items/X"  # the caller's scope is not modified
    assert (await _call(middleware_of, socket))["path"] == "/api/items/y"
    assert await _call(middleware_of, lifespan) is lifespan
