"""The shape of ``src/hybridcache``, read from its imports: they run one way, and only ``_redis`` touches redis-py.

Every import counts, including those under ``if TYPE_CHECKING:``, inside functions, and module names given to
``importlib.import_module``: a cycle hidden behind any of them is still a cycle a reader has to untangle.

The layers, from the top: the public facade and the integrations (``cache``, ``sync``, ``cqrs``, ``persistence``,
``fastapi``, ``telemetry``, ``prometheus``, ``cli``, the package itself), the algorithm (``_core``), the Redis
adapters (``_redis``), and the pure leaves (everything else: settings, keys, errors, metrics, connection strings,
generations, the memory store, serialization, resilience, JSONC). A module may import its own layer and the ones
below it, never one above.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import hybridcache

PACKAGE_DIR = Path(hybridcache.__file__).parent
TOP, CORE, REDIS, LEAF = 3, 2, 1, 0
_INTEGRATIONS = {"cache", "cqrs", "persistence", "fastapi", "telemetry", "prometheus", "cli", "sync"}


def module_name(path: Path) -> str:
    parts = ["hybridcache", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return TOP  # the package's __init__: the public facade
    first = parts[1]
    if first in _INTEGRATIONS:
        return TOP
    return {"_core": CORE, "_redis": REDIS}.get(first, LEAF)


def _imports(path: Path) -> Iterator[str]:
    """Every module name this file imports, anywhere in it."""
    if not path.is_relative_to(PACKAGE_DIR):
        package = ""  # outside the package (benchmarks, the harness): absolute imports are what matters
    elif path.name == "__init__.py":
        package = module_name(path)
    else:
        package = module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, one level up per extra dot
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for imported in _imports(path):
            if imported in MODULES and imported != module:
                edges[module].add(imported)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(edges.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted({*edges, *(target for targets in edges.values() for target in targets)}):
        if module not in index:
            visit(module)
    return found


def test_the_graph_sees_the_imports_it_must() -> None:
    """A check that finds nothing must be able to find something: these edges exist today."""
    edges = graph()
    assert "hybridcache._redis.l2" in edges["hybridcache.cache"]
    assert "hybridcache._core.tracing" in edges["hybridcache._core.fill_path"]  # a TYPE_CHECKING import
    assert "hybridcache.persistence.fastapi" in edges["hybridcache.fastapi"]  # import_module and TYPE_CHECKING


def test_no_import_cycle_in_the_package() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_down_the_layers() -> None:
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_only_the_redis_adapters_import_redis_py() -> None:
    outside = sorted(
        module
        for module, path in MODULES.items()
        if layer(module) != REDIS and any(name == "redis" or name.startswith("redis.") for name in _imports(path))
    )
    assert outside == []


def test_the_public_names_are_pinned() -> None:
    """Adding a public name is a decision: make it here too."""
    assert sorted(hybridcache.__all__) == [
        "BackplaneSettings",
        "CacheConfigurationError",
        "CacheConnectionError",
        "CacheKey",
        "CacheSettings",
        "CacheStats",
        "CircuitBreakerSettings",
        "CircuitOpenError",
        "DistributedLockSettings",
        "FactoryTimeoutError",
        "FailSafeSettings",
        "HybridCache",
        "HybridCacheError",
        "MemoryCacheSettings",
        "OutboxSettings",
    ]
    for name in hybridcache.__all__:
        assert getattr(hybridcache, name) is not None


def test_internal_modules_are_private() -> None:
    """The public modules are these; everything else at the top of the package is ``_private``."""
    public = {"cache", "cli", "connection", "cqrs", "errors", "fastapi", "keys", "metrics", "persistence"}
    public |= {"decorators", "prometheus", "settings", "sync", "telemetry"}
    top = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert sorted(name for name in top - public if not name.startswith("_")) == []


def test_benchmarks_and_the_harness_do_not_import_the_tests() -> None:
    """Benchmarks share the process harness (``harness/``) with the tests, never the tests themselves."""
    root = PACKAGE_DIR.parents[1]
    offenders = sorted(
        f"{path.relative_to(root)} imports {name}"
        for folder in ("benchmarks", "harness")
        for path in (root / folder).rglob("*.py")
        for name in _imports(path)
        if name == "tests" or name.startswith("tests.")
    )
    assert offenders == []
