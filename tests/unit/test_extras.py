"""Extras that mean what they say: ``hybridcache[fastapi]`` works without SQLAlchemy installed.

Run in a fresh interpreter in which importing ``sqlalchemy`` fails, as in a virtualenv with only that extra.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

WITHOUT_SQLALCHEMY = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoSqlAlchemy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sqlalchemy" or name.startswith("sqlalchemy."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoSqlAlchemy())
    """
)


def run_without_sqlalchemy(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SQLALCHEMY + textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


def test_the_fastapi_integration_imports_and_works_without_sqlalchemy() -> None:
    completed = run_without_sqlalchemy(
        """
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        import hybridcache.fastapi as integration
        from hybridcache import CacheSettings

        app = FastAPI(lifespan=integration.hybridcache_lifespan(CacheSettings()))

        @app.get("/n")
        async def n(cache: integration.CacheDep) -> int:
            return await cache.get_or_create("n", lambda: _answer())

        async def _answer() -> int:
            return 42

        with TestClient(app) as client:
            assert client.get("/n").json() == 42
        assert "sqlalchemy" not in sys.modules
        print("ok")
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_the_unit_of_work_dependency_says_it_needs_sqlalchemy() -> None:
    completed = run_without_sqlalchemy(
        """
        import hybridcache.fastapi
        hybridcache.fastapi.UnitOfWorkDep
        """
    )
    assert completed.returncode != 0
    assert "No module named 'sqlalchemy'" in completed.stderr
