"""Case-insensitive route matching, as ASP.NET Core does it: a client written against the seed's
``[Route("api/[controller]")]`` calls ``/api/Dealership/1``, and Starlette's router only knows ``/api/dealership/{id}``.

:class:`CaseInsensitivePaths` rewrites the *literal* segments of a request path to the spelling of the route
template they match when letter case is ignored; everything the client chose — path parameter values, the query
string — reaches the route exactly as sent. OpenAPI and ``Location`` headers keep the canonical lower-case paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import routing as fastapi_routing
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CaseInsensitivePaths"]

# "{name}" in a Starlette path format (the template with convertors removed: "/api/dealership/{id}").
_PARAMETER = re.compile(r"\{([^{}]+)\}")

# FastAPI >= 0.137 keeps an included router as one lazy entry of app.routes (no path of its own);
# iter_route_contexts flattens those into one entry per endpoint, with its full path. Older FastAPI copies every
# route into app.routes, which is flat already.
_flatten: Callable[[Sequence[BaseRoute]], Iterable[Any]] = getattr(
    fastapi_routing, "iter_route_contexts", lambda routes: routes
)


@dataclass(frozen=True, slots=True)
class _Template:
    """One route's path template, matched ignoring the case of ASCII letters."""

    pattern: re.Pattern[str]
    # The template split at its parameters: literal, name, literal, name, ..., literal.
    pieces: tuple[str, ...]
    methods: frozenset[str] | None

    @classmethod
    def of(cls, route: Any) -> _Template | None:
        regex = getattr(route, "path_regex", None)
        path_format = getattr(route, "path_format", None)
        if not isinstance(regex, re.Pattern) or not isinstance(path_format, str) or not path_format.startswith("/"):
            return None  # not a path route (e.g. a Host route)
        # ASCII letters only: Unicode IGNORECASE would also take U+017F (long s) for "s" and U+212A (Kelvin
        # sign) for "k", and a path spelled with those is no spelling of an ASCII route.
        pattern = re.compile(str(regex.pattern), re.IGNORECASE | re.ASCII)
        methods = getattr(route, "methods", None)
        return cls(pattern, tuple(_PARAMETER.split(path_format)), frozenset(methods) if methods else None)

    def canonical(self, path: str) -> str | None:
        """``path`` with this template's literals in their declared case, or ``None`` if it does not match."""
        match = self.pattern.match(path)
        if match is None:
            return None
        values = match.groupdict()
        parts = [piece if index % 2 == 0 else values[piece] for index, piece in enumerate(self.pieces)]
        return "".join(parts)

    def accepts(self, method: str | None) -> bool:
        return self.methods is None or method is None or method in self.methods


class CaseInsensitivePaths:
    """Pure ASGI middleware: routes the paths of ``routes`` whatever the case of their literal segments.

    For an HTTP or WebSocket request, the first template in route order that matches the path ignoring the case
    of ASCII letters — preferring one that accepts the request's method, as the router prefers a full match —
    gives the path its spelling: ``/API/Dealership/Search`` becomes ``/api/dealership/search``, while in
    ``/Api/Dealership/AbC`` the id ``AbC`` is kept as sent. A path that matches no template is passed on
    unchanged (the router's 404), as is the query string, always. Trailing slashes are kept, so the router's
    slash redirect points at the canonical spelling. ``root_path`` (a mount prefix) is left as it is.

    ``routes`` is read when the first request arrives, and again whenever its length changes. Add this
    middleware last (outermost): it hands a copy of the scope inward, and whatever records the matched route
    (the ``route`` key the router sets) must sit inside it.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes
        self._templates: tuple[_Template, ...] = ()
        self._compiled_from = -1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            canonical = self.canonical_path(path, scope.get("method"), scope.get("root_path", ""))
            if canonical != path:
                scope = {**scope, "path": canonical}
        await self.app(scope, receive, send)

    def canonical_path(self, path: str, method: str | None = None, root_path: str = "") -> str:
        """``path`` as the router should see it: see the class docstring."""
        prefix, route_path = _split_root(path, root_path)
        bare = route_path.rstrip("/") or route_path
        slashes = route_path[len(bare) :]
        candidates = [(route_path, "")]
        if slashes:  # "/API/Dealership/" is "/api/dealership" plus the slash the router redirects away
            candidates.append((bare, slashes))
        for candidate, suffix in candidates:
            found = self._canonical_route_path(candidate, method)
            if found is not None:
                return prefix + found + suffix
        return path

    def _canonical_route_path(self, route_path: str, method: str | None) -> str | None:
        fallback: str | None = None
        for template in self._current_templates():
            canonical = template.canonical(route_path)
            if canonical is None:
                continue
            if template.accepts(method):
                return canonical
            if fallback is None:
                fallback = canonical  # the path is known, the method is not: the router answers 405
        return fallback

    def _current_templates(self) -> tuple[_Template, ...]:
        if self._compiled_from != len(self._routes):
            templates = (_Template.of(route) for route in _flatten(self._routes))
            self._templates = tuple(template for template in templates if template is not None)
            self._compiled_from = len(self._routes)
        return self._templates


def _split_root(path: str, root_path: str) -> tuple[str, str]:
    """``(root_path, the rest)`` when ``path`` starts with the ``root_path`` segment(s), else ``("", path)`` —
    the same split Starlette's router makes before matching."""
    if root_path and path.startswith(root_path) and (len(path) == len(root_path) or path[len(root_path)] == "/"):
        return root_path, path[len(root_path) :]
    return "", path
