"""The ``hybridcache`` command line without Redis: argument handling, help, exit codes and ``config check``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.process import find_free_port
from hybridcache.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser, load_settings, main

SECRET = "hunter2-very-secret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer ``TheTechLoopCache__…`` variables, and a working directory without appsettings.json."""
    for name in list(os.environ):
        if name.lower().startswith(("thetechloopcache__", "caching__")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, section: dict[str, Any], name: str = "TheTechLoopCache") -> Path:
    path.write_text(json.dumps({name: section}), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ arguments


def test_help_shows_commands_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == EXIT_OK
    for command in ("stats", "get", "invalidate", "clear", "config"):
        assert command in out
    assert "hybridcache invalidate --prefix Dealership:Search" in out
    assert "exit codes: 0 ok, 1 operation failed, 2 usage or configuration error" in out


@pytest.mark.parametrize("command", [["stats"], ["get"], ["invalidate"], ["clear"], ["config", "check"]])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == EXIT_OK
    assert out.startswith(f"usage: hybridcache {' '.join(command)}")
    assert "--config FILE" in out
    if command != ["clear"]:
        assert "examples:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["flush"], "invalid choice: 'flush'"),
        (["get"], "the following arguments are required: KEY"),
        (["config"], "the following arguments are required: SUBCOMMAND"),
        (["stats", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (EXIT_USAGE, "")
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["invalidate"], "invalidate needs at least one KEY, --prefix or --tag"),
        (["invalidate", "--prefix", "Dealership:Search*"], "contains a glob character"),
        (["invalidate", "Dealership:\n42"], "contains control characters"),
        (["get", "Dealership:\x1b42"], "contains control characters"),
    ],
)
def test_bad_targets_exit_2_before_any_connection(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert err.startswith("hybridcache: error: ")
    assert message in err


def test_global_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--config", "a.json", "stats"]).config == Path("a.json")
    assert parser.parse_args(["stats", "--config", "b.json"]).config == Path("b.json")
    assert parser.parse_args(["--config", "a.json", "stats", "--config", "b.json"]).config == Path("b.json")
    args = parser.parse_args(["-v", "invalidate", "K:1", "--prefix", "P", "--prefix", "Q", "--tag", "T", "-v"])
    assert (args.keys, args.prefix, args.tag, args.verbose) == (["K:1"], ["P", "Q"], ["T"], 1)
    defaults = parser.parse_args(["clear"])
    assert (defaults.config, defaults.section, defaults.verbose) == (None, "TheTechLoopCache", 0)


@pytest.mark.parametrize("argv", [["stats"], ["get", "A:1"], ["invalidate", "A:1"], ["clear"]])
def test_commands_that_need_redis_exit_2_without_a_configuration(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert err.strip() == (
        f"hybridcache: error: TheTechLoopCache:Configuration is not set: '{argv[0]}' needs the service's Redis"
    )


# ------------------------------------------------------------------------------------------------ config check


def test_config_check_prints_the_effective_settings_with_the_password_masked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "svc.json",
        {"Configuration": f"cache.local:6380,password={SECRET},ssl=true", "ServiceName": "svc", "InstanceName": "Co:"},
    )
    monkeypatch.setenv("TheTechLoopCache__MemoryCache__SizeLimit", "512")
    code, out, err = run(capsys, "config", "check", str(path))
    assert (code, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert lines[0] == f"configuration is valid ({path}, section TheTechLoopCache)"
    assert "environment:  TheTechLoopCache__MemoryCache__SizeLimit" in lines
    assert "namespace:    svc:v1:   (Redis keys: Co:svc:v1:<key>)" in lines
    assert "redis:        rediss://cache.local:6380/0" in lines
    assert 'TheTechLoopCache:Configuration = "cache.local:6380,password=***,ssl=true"' in lines
    assert "TheTechLoopCache:MemoryCache:SizeLimit = 512" in lines
    assert "TheTechLoopCache:CircuitBreaker:FailureThreshold = 5" in lines
    assert SECRET not in out


def test_config_check_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path / "svc.json", {"Configuration": f"redis://user:{SECRET}@h:6379/2", "CacheVersion": "v7"})
    code, out, _ = run(capsys, "--config", str(path), "config", "check", "--json")
    assert code == EXIT_OK
    document = json.loads(out)
    assert document["namespace"] == "app:v7:"
    assert document["redis"] == "redis://user@h:6379/2"
    assert document["settings"]["Configuration"] == "redis://user:***@h:6379/2"
    assert document["settings"]["MemoryCache"] == {"Enabled": True, "DefaultExpirationSeconds": 30.0, "SizeLimit": 1024}
    assert document["environment"] == []
    assert SECRET not in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"MemoryCache": {"SizeLimit": "abc"}}, "TheTechLoopCache:MemoryCache:SizeLimit: expected a positive integer"),
        ({"MemoryCach": {}}, "TheTechLoopCache:MemoryCach: unknown key (did you mean MemoryCache?)"),
        ({"Configuration": f"h:6379,password={SECRET},bogus=1"}, "TheTechLoopCache:Configuration: unknown option"),
        ({"Configuration": f"redis://u:{SECRET}@h:notaport"}, "TheTechLoopCache:Configuration: invalid port"),
    ],
)
def test_config_check_of_a_bad_configuration_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "bad.json", content)
    code, out, err = run(capsys, "config", "check", str(path))
    assert (code, out) == (EXIT_USAGE, "")
    assert err.count("\n") == 1
    assert err.startswith(f"hybridcache: error: {message}")
    assert SECRET not in err


def test_config_check_of_a_missing_or_broken_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "config", "check", str(tmp_path / "nope.json"))
    assert code == EXIT_USAGE
    assert err.strip() == f"hybridcache: error: configuration file not found: {tmp_path / 'nope.json'}"
    broken = tmp_path / "broken.json"
    broken.write_text('{"TheTechLoopCache": {', encoding="utf-8")
    code, _, err = run(capsys, "config", "check", str(broken))
    assert code == EXIT_USAGE
    assert "invalid JSON at line 1" in err


def test_a_bad_environment_variable_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TheTechLoopCache__CircuitBreaker__FailureThreshold", "0")
    code, _, err = run(capsys, "config", "check")
    assert code == EXIT_USAGE
    assert "(from environment variable TheTechLoopCache__CircuitBreaker__FailureThreshold)" in err
    code, _, err = run(capsys, "stats")
    assert code == EXIT_USAGE, "every command loads the configuration the same way"


def test_the_default_file_is_appsettings_json_in_the_working_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "config", "check")
    assert code == EXIT_OK
    assert out.splitlines()[0] == "configuration is valid (environment only (no appsettings.json here))"
    assert "redis:        none: L1 only" in out

    write(tmp_path / "appsettings.json", {"ServiceName": "here-svc"})
    monkeypatch.setenv("TheTechLoopCache__CacheVersion", "v9")
    settings, source = load_settings(None)
    assert (settings.service_name, settings.cache_version) == ("here-svc", "v9")
    assert source == "appsettings.json, section TheTechLoopCache"


def test_another_section_and_its_environment_prefix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "nested.json"
    path.write_text(json.dumps({"Caching": {"Main": {"ServiceName": "nested-svc"}}}), encoding="utf-8")
    monkeypatch.setenv("Caching__Main__CacheVersion", "v3")
    code, out, _ = run(capsys, "--section", "Caching:Main", "config", "check", str(path))
    assert code == EXIT_OK
    assert "namespace:    nested-svc:v3:" in out
    assert 'Caching:Main:ServiceName = "nested-svc"' in out


def test_config_check_connect_fails_with_exit_1_when_redis_does_not_answer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = find_free_port()  # nothing listens there
    path = write(tmp_path / "svc.json", {"Configuration": f"127.0.0.1:{port},password={SECRET}"})
    code, out, err = run(capsys, "config", "check", str(path), "--connect")
    assert code == EXIT_FAILED
    assert out.startswith("configuration is valid")
    assert err.startswith(f"hybridcache: failed: cannot reach Redis at redis://127.0.0.1:{port}/0: ConnectionError")
    assert SECRET not in out + err
