"""``sentinelUser``/``sentinelPassword``: masked wherever the endpoint is shown, and given to the sentinels only."""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import SentinelConnectionPool

from hybridcache._redis.clients import connect
from hybridcache.connection import mask_configuration, parse_redis_configuration

TEXT = (
    "127.0.0.1:26379,127.0.0.1:26380,serviceName=mymaster,"
    "user=app,password=data-pw,sentinelUser=watch,sentinelPassword=s3cret"
)


def test_repr_masks_the_sentinel_password_and_str_omits_every_credential() -> None:
    config = parse_redis_configuration(TEXT)

    assert "s3cret" not in repr(config)
    assert "data-pw" not in repr(config)
    assert "('sentinelPassword', '***')" in repr(config)
    assert "('sentinelUser', 'watch')" in repr(config)
    assert str(config) == "redis://app@127.0.0.1:26379,127.0.0.1:26380/0"
    assert mask_configuration(TEXT).endswith("password=***,sentinelUser=watch,sentinelPassword=***")


def test_the_sentinel_credentials_are_read_from_the_options_ignoring_case() -> None:
    config = parse_redis_configuration("s1,serviceName=m,SENTINELUSER=watch,sentinelpassword=s3cret")

    assert (config.sentinel_username, config.sentinel_password) == ("watch", "s3cret")
    assert (config.username, config.password) == (None, None)
    bare = parse_redis_configuration("s1,serviceName=m,password=pw")
    assert (bare.sentinel_username, bare.sentinel_password) == (None, None)


def connection_kwargs(client: Any) -> dict[str, Any]:
    return dict(client.connection_pool.connection_kwargs)


async def test_the_sentinels_get_the_sentinel_credentials_and_the_data_nodes_their_own() -> None:
    """Building Sentinel clients opens no connection: the options each pool would connect with are inspected."""
    clients = await connect(
        parse_redis_configuration(TEXT), operation_timeout=0.25, connect_timeout=1.0, request_pool_size=4
    )
    try:
        pool = clients.request.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        sentinels = pool.sentinel_manager.sentinels
        assert len(sentinels) == 2
        for sentinel in sentinels:
            options = connection_kwargs(sentinel)
            assert (options["username"], options["password"]) == ("watch", "s3cret")
            assert options["retry"].get_retries() == 0  # a refused AUTH moves on to the next sentinel at once
        for client in (clients.request, clients.background):
            options = connection_kwargs(client)
            assert (options["username"], options["password"]) == ("app", "data-pw")
    finally:
        await clients.aclose()


async def test_without_sentinel_credentials_the_sentinels_are_asked_without_any() -> None:
    clients = await connect(
        parse_redis_configuration("127.0.0.1:26379,serviceName=mymaster,password=data-pw"),
        operation_timeout=0.25,
        connect_timeout=1.0,
        request_pool_size=4,
    )
    try:
        pool = clients.request.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        (sentinel,) = pool.sentinel_manager.sentinels
        options = connection_kwargs(sentinel)
        assert (options.get("username"), options.get("password")) == (None, None)
    finally:
        await clients.aclose()
