"""CacheSettings: the seed's TheTechLoopCache section from JSON, mappings and ASP.NET-style environment."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hybridcache.errors import CacheConfigurationError, HybridCacheError
from hybridcache.settings import (
    BackplaneSettings,
    CacheSettings,
    CircuitBreakerSettings,
    DistributedLockSettings,
    FailSafeSettings,
    MemoryCacheSettings,
)

SEED: dict[str, Any] = {
    "TheTechLoopCache": {
        "Configuration": "localhost:6379,password=***",
        "InstanceName": "Company:",
        "ServiceName": "company-svc",
        "CacheVersion": "v1",
        "DefaultExpirationMinutes": 60,
        "Enabled": True,
        "CircuitBreaker": {"Enabled": True, "BreakDurationSeconds": 60, "FailureThreshold": 5},
        "MemoryCache": {"Enabled": True, "DefaultExpirationSeconds": 30, "SizeLimit": 1024},
    }
}
NO_ENV: dict[str, str] = {}


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "appsettings.json"
    path.write_text(json.dumps(SEED, indent=2), encoding="utf-8")
    return path


def load(section: dict[str, Any], **environ: str) -> CacheSettings:
    return CacheSettings.from_mapping(section, environ=environ)


def config_error(section: dict[str, Any], **environ: str) -> str:
    with pytest.raises(CacheConfigurationError) as info:
        load(section, **environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_seed_appsettings_json_loads_with_its_exact_values(seed_file: Path) -> None:
    settings = CacheSettings.from_json(seed_file, environ=NO_ENV)

    assert settings.configuration == "localhost:6379,password=***"
    assert settings.instance_name == "Company:"
    assert settings.service_name == "company-svc"
    assert settings.cache_version == "v1"
    assert settings.default_expiration_minutes == 60
    assert settings.default_expiration == timedelta(hours=1)
    assert settings.enabled is True
    assert settings.circuit_breaker == CircuitBreakerSettings(
        enabled=True, break_duration_seconds=60, failure_threshold=5
    )
    assert settings.circuit_breaker.break_duration == timedelta(seconds=60)
    assert settings.memory_cache == MemoryCacheSettings(enabled=True, default_expiration_seconds=30, size_limit=1024)
    assert settings.memory_cache.default_expiration == timedelta(seconds=30)
    endpoint = settings.redis_endpoint
    assert endpoint is not None
    assert endpoint.hosts == (("localhost", 6379),)
    assert endpoint.password == "***"


def test_absent_keys_take_the_seed_defaults_and_ours() -> None:
    settings = CacheSettings.from_env(environ=NO_ENV)

    assert settings == CacheSettings()
    assert settings.configuration is None
    assert settings.redis_endpoint is None  # no Redis: L1 only
    assert (settings.instance_name, settings.service_name, settings.cache_version) == ("", "app", "v1")
    assert settings.default_expiration_minutes == 60
    assert settings.enabled is True
    assert settings.circuit_breaker == CircuitBreakerSettings(
        enabled=True, break_duration_seconds=60, failure_threshold=5
    )
    assert settings.memory_cache == MemoryCacheSettings(enabled=True, default_expiration_seconds=30, size_limit=1024)
    assert settings.null_expiration == timedelta(seconds=60)
    assert settings.connect_timeout == timedelta(seconds=1)
    assert settings.operation_timeout == timedelta(milliseconds=250)
    assert settings.backplane == BackplaneSettings(
        enabled=True,
        heartbeat_interval_seconds=1.0,
        heartbeat_timeout_seconds=2.0,
        disconnected_expiration_seconds=1.0,
    )
    assert settings.fail_safe == FailSafeSettings(
        enabled=False,
        max_duration_minutes=1440,
        throttle_duration_seconds=30,
        factory_soft_timeout_milliseconds=None,
        factory_hard_timeout_milliseconds=None,
    )
    assert settings.fail_safe.max_duration == timedelta(days=1)
    assert settings.fail_safe.factory_soft_timeout is None
    assert settings.eager_refresh_threshold is None
    assert settings.jitter_max_duration == timedelta(0)
    assert settings.distributed_lock == DistributedLockSettings(
        enabled=False, lease_milliseconds=10000, wait_timeout_milliseconds=10000
    )
    assert settings.protocol == 2


def test_environment_overrides_the_json_file(seed_file: Path) -> None:
    settings = CacheSettings.from_json(
        seed_file,
        environ={
            "TheTechLoopCache__MemoryCache__SizeLimit": "512",
            "THETECHLOOPCACHE__circuitbreaker__ENABLED": "false",
            "TheTechLoopCache__Configuration": "redis://127.0.0.1:6390/4",
            "TheTechLoopCache__FailSafe__FactorySoftTimeoutMilliseconds": "100",
            "TheTechLoopCache__EagerRefreshThreshold": "0.9",
            "OtherSection__MemoryCache__SizeLimit": "7",  # not ours: ignored
        },
    )

    assert settings.memory_cache.size_limit == 512
    assert settings.memory_cache.default_expiration_seconds == 30  # the rest of the JSON section survives
    assert settings.circuit_breaker.enabled is False
    assert settings.circuit_breaker.failure_threshold == 5
    assert settings.configuration == "redis://127.0.0.1:6390/4"
    assert settings.fail_safe.factory_soft_timeout == timedelta(milliseconds=100)
    assert settings.eager_refresh_threshold == 0.9
    assert settings.service_name == "company-svc"


def test_an_empty_environment_value_clears_a_nullable_key(seed_file: Path) -> None:
    settings = CacheSettings.from_json(
        seed_file, environ={"TheTechLoopCache__Configuration": "", "TheTechLoopCache__Protocol": ""}
    )

    assert settings.configuration is None
    assert settings.redis_endpoint is None
    assert settings.protocol is None


def test_keys_match_in_any_case_and_python_names_work_too() -> None:
    settings = load({"servicename": "a", "MEMORYCACHE": {"sizelimit": 3}, "circuit_breaker": {"failure_threshold": 2}})
    built = CacheSettings(
        service_name="a",
        memory_cache=MemoryCacheSettings(size_limit=3),
        circuit_breaker=CircuitBreakerSettings(failure_threshold=2),
    )

    assert settings == built
    assert CacheSettings(service_name="x", configuration="redis://127.0.0.1:6380/0").redis_endpoint is not None


def test_settings_are_immutable() -> None:
    settings = CacheSettings()

    with pytest.raises(ValidationError):
        settings.service_name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.memory_cache.size_limit = 1  # type: ignore[misc]


def test_string_values_from_json_are_coerced_like_dotnet_configuration() -> None:
    settings = load({"DefaultExpirationMinutes": "1.5", "MemoryCache": {"SizeLimit": "10", "Enabled": "False"}})

    assert settings.default_expiration == timedelta(seconds=90)
    assert settings.memory_cache.size_limit == 10
    assert settings.memory_cache.enabled is False


@pytest.mark.parametrize(
    ("section", "environ", "expected"),
    [
        (
            {"MemoryCache": {"SizeLimit": "abc"}},
            {},
            "TheTechLoopCache:MemoryCache:SizeLimit: expected a positive integer, got 'abc'",
        ),
        (
            {"MemoryCache": {"SizeLimit": -5}},
            {},
            "TheTechLoopCache:MemoryCache:SizeLimit: expected a positive integer, got -5",
        ),
        (
            {"CircuitBreaker": {"FailureThreshold": 1.5}},
            {},
            "TheTechLoopCache:CircuitBreaker:FailureThreshold: expected a positive integer, got 1.5",
        ),
        ({"Enabled": "maybe"}, {}, "TheTechLoopCache:Enabled: expected true or false, got 'maybe'"),
        (
            {"DefaultExpirationMinutes": True},
            {},
            "TheTechLoopCache:DefaultExpirationMinutes: expected a positive number, got True",
        ),
        (
            {"EagerRefreshThreshold": 1.5},
            {},
            "TheTechLoopCache:EagerRefreshThreshold: expected null or a number strictly between 0 and 1, got 1.5",
        ),
        (
            {"EagerRefreshThreshold": 0},
            {},
            "TheTechLoopCache:EagerRefreshThreshold: expected null or a number strictly between 0 and 1, got 0",
        ),
        (
            {"JitterMaxDurationSeconds": -1},
            {},
            "TheTechLoopCache:JitterMaxDurationSeconds: expected a number >= 0, got -1",
        ),
        ({"Protocol": 4}, {}, "TheTechLoopCache:Protocol: expected 2, 3 or null, got 4"),
        (
            {"GenerationRetentionHours": 0},
            {},
            "TheTechLoopCache:GenerationRetentionHours: expected a positive number, got 0",
        ),
        (
            {"ServiceName": "my svc"},
            {},
            "TheTechLoopCache:ServiceName: expected a non-empty name without spaces, : or *?[], got 'my svc'",
        ),
        (
            {},
            {"TheTechLoopCache__Backplane__HeartbeatIntervalSeconds": "soon"},
            "TheTechLoopCache:Backplane:HeartbeatIntervalSeconds: expected a positive number, got 'soon' "
            "(from environment variable TheTechLoopCache__Backplane__HeartbeatIntervalSeconds)",
        ),
        (
            {"MemoryCache": 5},
            {},
            "TheTechLoopCache:MemoryCache: expected a section (JSON object) with keys Enabled, "
            "DefaultExpirationSeconds, SizeLimit, got 5",
        ),
        (
            {"FailSafe": {"FactorySoftTimeoutMilliseconds": 500, "FactoryHardTimeoutMilliseconds": 100}},
            {},
            "TheTechLoopCache:FailSafe:FactorySoftTimeoutMilliseconds: expected less than "
            "FactoryHardTimeoutMilliseconds (100), got 500",
        ),
    ],
)
def test_a_bad_value_fails_at_load_with_one_line_naming_key_and_form(
    section: dict[str, Any], environ: dict[str, str], expected: str
) -> None:
    assert config_error(section, **environ) == expected


def test_an_unknown_key_is_an_error_listing_the_valid_ones() -> None:
    message = config_error({"MemoryCache": {"SizeLimt": 10}})

    assert message == (
        "TheTechLoopCache:MemoryCache:SizeLimt: unknown key (did you mean SizeLimit?); "
        "valid keys under TheTechLoopCache:MemoryCache are Enabled, DefaultExpirationSeconds, SizeLimit"
    )


def test_an_unknown_key_in_the_environment_is_an_error_too() -> None:
    message = config_error({}, TheTechLoopCache__DefaultExpirationMinuts="5")

    assert message.startswith("TheTechLoopCache:DefaultExpirationMinuts: unknown key (did you mean ")
    assert "NullExpirationSeconds" in message


def test_an_environment_path_below_a_value_is_an_error() -> None:
    message = config_error({}, TheTechLoopCache__Enabled__Value="true")

    assert message == (
        "TheTechLoopCache:Enabled: is a value, not a section (from environment variable "
        "TheTechLoopCache__Enabled__Value)"
    )


def test_the_same_key_twice_in_different_case_is_an_error() -> None:
    message = config_error({"ServiceName": "a", "servicename": "b"})

    assert message == "TheTechLoopCache:servicename: key given twice (keys ignore case)"


def test_several_problems_are_reported_together_on_one_line() -> None:
    message = config_error({"MemoryCache": {"SizeLimit": 0}, "Enabled": "perhaps"})

    assert "TheTechLoopCache:MemoryCache:SizeLimit: expected a positive integer, got 0" in message
    assert "TheTechLoopCache:Enabled: expected true or false, got 'perhaps'" in message


def test_constructing_with_python_names_validates_the_same_way() -> None:
    with pytest.raises(CacheConfigurationError, match=r"^TheTechLoopCache:MemoryCache:SizeLimit: expected a posi"):
        MemoryCacheSettings(size_limit=0)
    with pytest.raises(CacheConfigurationError, match=r"^TheTechLoopCache:MemoryCache:SizeLimit: expected a posi"):
        CacheSettings(memory_cache={"size_limit": 0})
    with pytest.raises(CacheConfigurationError, match=r"^TheTechLoopCache:Colour: expected a known key \("):
        CacheSettings(colour="blue")  # type: ignore[call-arg]


def test_errors_are_value_errors_of_the_library_hierarchy() -> None:
    with pytest.raises(CacheConfigurationError) as info:
        load({"Enabled": "no way"})

    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, HybridCacheError)
    assert info.value.__cause__ is None  # the pydantic error (holding raw input) is not chained


def test_a_malformed_connection_string_fails_at_load_without_echoing_the_password() -> None:
    message = config_error({"Configuration": "cache.local:80x,password=Sup3rSecret"})

    assert message.startswith("TheTechLoopCache:Configuration: invalid port in endpoint 'cache.local:80x'")
    assert "Sup3rSecret" not in message


def test_repr_and_str_mask_the_password_in_both_connection_forms() -> None:
    for configuration in ("cache.local:6379,password=Sup3rSecret,ssl=true", "redis://app:Sup3rSecret@cache.local/1"):
        settings = load({"Configuration": configuration})

        assert "Sup3rSecret" not in repr(settings)
        assert "Sup3rSecret" not in str(settings)
        assert "***" in repr(settings)
        assert "Sup3rSecret" not in repr(settings.redis_endpoint)
        assert settings.configuration == configuration  # the real value stays usable


def test_redis_endpoint_takes_unset_timeouts_and_protocol_from_the_section() -> None:
    settings = load(
        {
            "Configuration": "cache.local,connectTimeout=5000",
            "ConnectTimeoutMilliseconds": 300,
            "OperationTimeoutMilliseconds": 40,
            "Protocol": 3,
        }
    )

    endpoint = settings.redis_endpoint
    assert endpoint is not None
    assert endpoint.connect_timeout == 5.0  # the connection string wins
    assert endpoint.operation_timeout == 0.04
    assert endpoint.protocol == 3
    assert endpoint.to_redis_kwargs()["socket_timeout"] == 0.04


def test_from_json_names_a_missing_file_unless_missing_ok(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "appsettings.json"

    with pytest.raises(CacheConfigurationError, match=r"^configuration file not found: .*nope/appsettings\.json$"):
        CacheSettings.from_json(missing, environ=NO_ENV)
    settings = CacheSettings.from_json(missing, missing_ok=True, environ={"TheTechLoopCache__ServiceName": "from-env"})
    assert settings == CacheSettings(service_name="from-env")


def test_from_json_reports_invalid_json_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"TheTechLoopCache": {"Enabled": tru}}', encoding="utf-8")

    with pytest.raises(CacheConfigurationError, match=r"appsettings\.json: invalid JSON at line 1 column"):
        CacheSettings.from_json(path, environ=NO_ENV)


def test_from_json_reads_a_nested_section_case_insensitively_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    document = {"Logging": {"LogLevel": "x"}, "services": {"thetechloopcache": {"ServiceName": "nested"}}}
    path.write_text("\ufeff" + json.dumps(document), encoding="utf-8")

    settings = CacheSettings.from_json(
        path, section="Services:TheTechLoopCache", environ={"Services__TheTechLoopCache__CacheVersion": "v2"}
    )

    assert (settings.service_name, settings.cache_version) == ("nested", "v2")


def test_a_file_without_the_section_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"Logging": {}}', encoding="utf-8")

    assert CacheSettings.from_json(path, environ=NO_ENV) == CacheSettings()


@given(st.integers(min_value=1, max_value=10**9))
def test_any_positive_size_limit_from_the_environment_wins(size: int) -> None:
    settings = load(SEED["TheTechLoopCache"], TheTechLoopCache__MemoryCache__SizeLimit=str(size))

    assert settings.memory_cache.size_limit == size


@given(st.text(min_size=1).filter(lambda s: not any(c.isdigit() for c in s)) | st.integers(max_value=0).map(str))
def test_text_that_is_no_positive_integer_is_rejected_naming_the_key(text: str) -> None:
    message = config_error({"MemoryCache": {"SizeLimit": text}})

    assert message.startswith("TheTechLoopCache:MemoryCache:SizeLimit: expected a positive integer, got ")
