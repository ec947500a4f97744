"""The Configuration connection string: StackExchange.Redis form and redis:// / rediss:// URLs."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest
import redis.asyncio
from hypothesis import assume, given
from hypothesis import strategies as st

from hybridcache.connection import RedisEndpointConfig, mask_configuration, parse_redis_configuration
from hybridcache.errors import CacheConfigurationError

KEY = "TheTechLoopCache:Configuration"


def parse_error(text: str) -> str:
    with pytest.raises(CacheConfigurationError) as info:
        parse_redis_configuration(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{KEY}: ")
    return message


# -- StackExchange.Redis form ---------------------------------------------------------------------------------


def test_the_seed_string() -> None:
    config = parse_redis_configuration("localhost:6379,password=***")

    assert config == RedisEndpointConfig(hosts=(("localhost", 6379),), password="***")
    assert config.abort_connect is True  # StackExchange's default outside Azure
    assert (config.connect_timeout, config.operation_timeout, config.protocol) == (None, None, None)


def test_every_mapped_option_case_insensitively() -> None:
    config = parse_redis_configuration(
        " cache.local:7000 , USER=app,Password=p=w, SSL=True,abortconnect=FALSE,connectTimeout=5000,"
        "syncTimeout=1000,defaultDatabase=2,name=company-svc,sslHost=cache.example.com,protocol=resp3,"
        "allowAdmin=true,connectRetry=3,keepAlive=60,"
    )

    assert config == RedisEndpointConfig(
        hosts=(("cache.local", 7000),),
        username="app",
        password="p=w",  # only the first '=' separates name and value
        ssl=True,
        db=2,
        client_name="company-svc",
        connect_timeout=5.0,
        operation_timeout=1.0,
        abort_connect=False,
        ssl_host="cache.example.com",
        protocol=3,
        options=(("allowAdmin", "true"), ("connectRetry", "3"), ("keepAlive", "60")),
    )


def test_async_timeout_wins_over_sync_timeout_for_an_asyncio_client() -> None:
    config = parse_redis_configuration("h,syncTimeout=1000,asyncTimeout=250")

    assert config.operation_timeout == 0.25


@pytest.mark.parametrize(
    ("text", "port"),
    [("h", 6379), ("h,ssl=true", 6380), ("h,ssl=false", 6379), ("h:7000,ssl=true", 7000), ("h,serviceName=m", 26379)],
)
def test_default_port_follows_stackexchange(text: str, port: int) -> None:
    assert parse_redis_configuration(text).hosts == (("h", port),)


def test_several_endpoints_and_ipv6_are_kept_for_cluster_and_sentinel() -> None:
    config = parse_redis_configuration("[::1]:7000,10.0.0.2,[fe80::1],::2,sentinel-a:26380,serviceName=mymaster")

    assert config.hosts == (
        ("::1", 7000),
        ("10.0.0.2", 26379),
        ("fe80::1", 26379),
        ("::2", 26379),
        ("sentinel-a", 26380),
    )
    assert config.service_name == "mymaster"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty connection string"),
        ("ssl=true,password=x", "no endpoint (host[:port]) given"),
        ("localhost:abc", "invalid port in endpoint 'localhost:abc': expected an integer 1-65535"),
        ("localhost:0", "invalid port in endpoint 'localhost:0'"),
        ("localhost:65536", "invalid port in endpoint 'localhost:65536'"),
        ("local host", "invalid host name in endpoint 'local host'"),
        ("[::1", "malformed endpoint '[::1': expected [ipv6]:port"),
        ("[zz::1]:6379", "invalid IPv6 address in endpoint '[zz::1]:6379'"),
        ("h,pasword=secret", "unknown option 'pasword'"),
        ("h,ssl=yes", "option 'ssl' expected true or false, got 'yes'"),
        ("h,connectTimeout=5s", "option 'connectTimeout' expected a non-negative integer, got '5s'"),
        ("h,allowAdmin=maybe", "option 'allowAdmin' expected true or false, got 'maybe'"),
        ("h,protocol=resp4", "option 'protocol' expected resp2, resp3, 2 or 3, got 'resp4'"),
    ],
)
def test_malformed_stackexchange_strings_name_the_problem(text: str, problem: str) -> None:
    message = parse_error(text)

    assert message.startswith(f"{KEY}: {problem}")
    assert message.endswith("or 'redis[s]://[user:password@]host[:port][/db]'")
    assert "secret" not in message


def test_a_password_containing_a_comma_is_reported_without_echoing_it() -> None:
    message = parse_error("cache.local,password=abc,d ef!")

    assert "a segment after 'password=' is neither host[:port] nor option=value" in message
    assert "d ef" not in message


def test_the_key_in_messages_can_be_chosen() -> None:
    with pytest.raises(CacheConfigurationError, match=r"^Redis:Main: unknown option 'x'"):
        parse_redis_configuration("h,x=1", key="Redis:Main")


# -- URL form -----------------------------------------------------------------------------------------------


def test_a_full_redis_url() -> None:
    config = parse_redis_configuration(
        "redis://app:p%40ss%3Aword@cache.local:6390/3?protocol=3&timeout=0.5&connect_timeout=2&client_name=svc"
    )

    assert config == RedisEndpointConfig(
        hosts=(("cache.local", 6390),),
        username="app",
        password="p@ss:word",
        db=3,
        client_name="svc",
        connect_timeout=2.0,
        operation_timeout=0.5,
        protocol=3,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://localhost", RedisEndpointConfig(hosts=(("localhost", 6379),))),
        ("rediss://localhost", RedisEndpointConfig(hosts=(("localhost", 6379),), ssl=True)),
        ("REDIS://:pw@h:1/", RedisEndpointConfig(hosts=(("h", 1),), password="pw")),
        ("redis://u@h?db=5", RedisEndpointConfig(hosts=(("h", 6379),), username="u", db=5)),
        ("redis://[::1]:6380/0", RedisEndpointConfig(hosts=(("::1", 6380),))),
    ],
)
def test_url_variants(text: str, expected: RedisEndpointConfig) -> None:
    assert parse_redis_configuration(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://h", "unsupported URL scheme 'http'"),
        ("redis://u:secret@h:99999", "invalid port in URL: expected an integer 1-65535"),
        ("redis://u:secret@:6379", "no host in URL"),
        ("redis://u:secret@h/db1", "URL path must be a database number, got '/db1'"),
        ("redis://u:secret@h/0?retries=3", "unknown URL option 'retries' (known: db, protocol, timeout,"),
        ("redis://u:secret@h/0?timeout=-1", "URL option 'timeout' expected a positive number of seconds, got '-1'"),
        ("redis://u:secret@h/0?db=x", "URL option 'db' expected a non-negative integer, got 'x'"),
        ("redis://u:secret@h/0?protocol=4", "option 'protocol' expected resp2, resp3, 2 or 3, got '4'"),
    ],
)
def test_malformed_urls_name_the_problem_and_never_the_password(text: str, problem: str) -> None:
    message = parse_error(text)

    assert message.startswith(f"{KEY}: {problem}")
    assert "secret" not in message


# -- masking, conversion ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("h:1,password=s3cret,ssl=true", "h:1,password=***,ssl=true"),
        ("h,PassWord = s3cret", "h,PassWord =***"),
        ("h,sentinelPassword=s3cret,password=other", "h,sentinelPassword=***,password=***"),
        ("redis://user:s3cret@h:1/0", "redis://user:***@h:1/0"),
        ("rediss://:s3cret@h", "rediss://:***@h"),
        ("redis://h:1/0", "redis://h:1/0"),
    ],
)
def test_mask_configuration(text: str, masked: str) -> None:
    assert mask_configuration(text) == masked


def test_repr_masks_the_password_and_str_omits_it() -> None:
    config = parse_redis_configuration("rediss://app:s3cret@cache.local:6390/2")

    assert "s3cret" not in repr(config)
    assert "password='***'" in repr(config)
    assert str(config) == "rediss://app@cache.local:6390/2"
    assert "password=None" in repr(parse_redis_configuration("h"))


def test_to_redis_kwargs_for_a_single_node() -> None:
    config = parse_redis_configuration("h:7000,user=u,password=pw,ssl=true,defaultDatabase=1,name=n,syncTimeout=300")

    kwargs = config.to_redis_kwargs()

    assert kwargs == {
        "host": "h",
        "port": 7000,
        "db": 1,
        "username": "u",
        "password": "pw",
        "ssl": True,
        "client_name": "n",
        "health_check_interval": 0,
        "socket_timeout": 0.3,
    }


async def test_the_kwargs_are_accepted_by_redis_py() -> None:
    kwargs = parse_redis_configuration("redis://u:pw@127.0.0.1:1/2?protocol=3&timeout=0.2&connect_timeout=0.1")
    client = redis.asyncio.Redis(**kwargs.to_redis_kwargs())  # constructing does not connect
    try:
        connection_kwargs = client.connection_pool.connection_kwargs
        assert connection_kwargs["port"] == 1
        assert connection_kwargs["socket_timeout"] == 0.2
        assert connection_kwargs["protocol"] == 3
    finally:
        await client.aclose()


@pytest.mark.parametrize("text", ["h1,h2", "h,serviceName=mymaster", "redis+cluster://h1:7000"])
def test_single_node_kwargs_refuse_cluster_and_sentinel(text: str) -> None:
    suffix = "" if "://" in text else ",password=s3cret"
    with pytest.raises(CacheConfigurationError, match="not a single node") as raised:
        parse_redis_configuration(text + suffix).to_redis_kwargs()
    assert "s3cret" not in str(raised.value)


def test_node_kwargs_leave_the_hosts_to_the_cluster_or_sentinel_client() -> None:
    kwargs = parse_redis_configuration("h1:7000,h2:7001,password=s3cret").to_redis_kwargs(single_host=False)
    assert "host" not in kwargs
    assert "port" not in kwargs
    assert kwargs["password"] == "s3cret"


@pytest.mark.parametrize(
    ("text", "hosts", "service", "cluster", "db"),
    [
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", (("127.0.0.1", 7000), ("127.0.0.1", 7001)), None, True, 0),
        ("redis+sentinel://:pw@s1,s2:26380/mymaster/2", (("s1", 26379), ("s2", 26380)), "mymaster", False, 2),
        ("s1:26379,s2:26379,serviceName=mymaster", (("s1", 26379), ("s2", 26379)), "mymaster", False, 0),
    ],
)
def test_cluster_and_sentinel_forms(
    text: str, hosts: tuple[tuple[str, int], ...], service: str | None, cluster: bool, db: int
) -> None:
    config = parse_redis_configuration(text)
    assert config.hosts == hosts
    assert config.service_name == service
    assert config.cluster is cluster
    assert config.db == db


@pytest.mark.parametrize("text", ["redis+sentinel://s1:26379", "redis+cluster://h1:7000/x", "redis+cluster://h:1?a=b"])
def test_malformed_cluster_and_sentinel_urls_name_the_key(text: str) -> None:
    with pytest.raises(CacheConfigurationError, match="TheTechLoopCache:Configuration"):
        parse_redis_configuration(text)


# -- properties ---------------------------------------------------------------------------------------------

hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,15}){0,3}", fullmatch=True)
hosts = hostnames | st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(str)
ports = st.integers(min_value=1, max_value=65535)
# StackExchange splits on ',' and trims each part, so a password there has neither commas nor spaces.
se_passwords = st.text(
    st.characters(exclude_characters=",", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1
)


def endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@given(host=hosts, port=ports, password=se_passwords, ssl=st.booleans(), db=st.integers(0, 15))
def test_stackexchange_form_round_trips(host: str, port: int, password: str, ssl: bool, db: int) -> None:
    text = f"{endpoint_text(host, port)},password={password},ssl={str(ssl).lower()},defaultDatabase={db}"

    config = parse_redis_configuration(text)

    assert config.hosts == ((host, port),)
    assert (config.password, config.ssl, config.db) == (password, ssl, db)


@given(host=hosts, port=ports, user=st.text(min_size=1), password=st.text(min_size=1), db=st.integers(0, 15))
def test_url_form_round_trips(host: str, port: int, user: str, password: str, db: int) -> None:
    text = f"rediss://{quote(user, safe='')}:{quote(password, safe='')}@{endpoint_text(host, port)}/{db}"

    config = parse_redis_configuration(text)

    assert config.hosts == ((host, port),)
    assert (config.username, config.password, config.ssl, config.db) == (user, password, True, db)


@given(host=hosts, port=ports, password=se_passwords.filter(lambda p: len(p) >= 6))
def test_the_password_never_shows_in_repr_masked_text_or_errors(host: str, port: int, password: str) -> None:
    text = f"{endpoint_text(host, port)},password={password}"
    config = parse_redis_configuration(text)
    assume(password not in repr(dataclasses.replace(config, password=None)))

    assert password not in repr(config)
    assert password not in str(config)
    assert password not in mask_configuration(text)
    with pytest.raises(CacheConfigurationError) as info:
        parse_redis_configuration(text + ",connectTimeout=soon")
    assert password not in str(info.value)
