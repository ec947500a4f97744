"""The ``Configuration`` connection string: StackExchange.Redis form or a ``redis://`` / ``rediss://`` URL.

Parsing is pure (no I/O, no DNS). Errors are one-line :class:`CacheConfigurationError` messages that name the
configuration key and never contain the password.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from hybridcache.errors import CacheConfigurationError

__all__ = ["RedisEndpointConfig", "mask_configuration", "parse_redis_configuration"]

DEFAULT_KEY = "TheTechLoopCache:Configuration"
_FORMS = "expected 'host[:port][,option=value...]' or 'redis[s]://[user:password@]host[:port][/db]'"
_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# StackExchange.Redis option names (matched ignoring case) by the kind of value they take.
_KINDS = {
    "bool": "abortConnect allowAdmin checkCertificateRevocation highIntegrity resolveDns setlib ssl tcpKeepAlive",
    "int": "asyncTimeout configCheckSeconds connectRetry connectTimeout defaultDatabase keepAlive "
    "syncTimeout topologyRefreshSeconds",
    "str": "channelPrefix configChannel defaults name password protocol proxy sentinelPassword sentinelUser "
    "serviceName sslHost sslProtocols tiebreaker tunnel user version",
}
_SE_OPTIONS = {name.lower(): (name, kind) for kind, names in _KINDS.items() for name in names.split()}
# The options RedisEndpointConfig has a field for; the other recognised ones are kept in `options`.
_MAPPED = {"abortConnect", "asyncTimeout", "connectTimeout", "defaultDatabase", "name", "password"}
_MAPPED |= {"protocol", "serviceName", "ssl", "sslHost", "syncTimeout", "user"}
_URL_OPTIONS = {
    "db": "db",
    "protocol": "protocol",
    "timeout": "operation_timeout",
    "socket_timeout": "operation_timeout",
    "connect_timeout": "connect_timeout",
    "socket_connect_timeout": "connect_timeout",
    "client_name": "client_name",
}


@dataclass(frozen=True, repr=False)
class RedisEndpointConfig:
    """A parsed connection string. Timeouts are in seconds; ``None`` means "not given in the string".

    ``hosts`` always has at least one entry, each with an explicit port. Several hosts without a
    ``service_name`` mean Redis Cluster seed nodes; with one, they are Sentinels (see ``hybridcache._redis.clients``).
    ``options`` keeps the recognised StackExchange options that have no redis-py equivalent, as given;
    ``sentinel_username``/``sentinel_password`` read the Sentinel credentials from there.
    """

    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    db: int = 0
    client_name: str | None = None
    connect_timeout: float | None = None
    operation_timeout: float | None = None
    abort_connect: bool = True
    ssl_host: str | None = None
    service_name: str | None = None
    protocol: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    cluster: bool = False  # a ``redis+cluster://`` URL; several endpoints without serviceName also mean Cluster

    def __repr__(self) -> str:
        """Every field; ``password`` and any ``*Password`` option (``sentinelPassword``) show as ``***``."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "password" and value is not None:
                shown = "'***'"
            elif f.name == "options":
                shown = repr(tuple((name, "***" if _is_secret(name) else text) for name, text in value))
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"RedisEndpointConfig({', '.join(parts)})"

    def __str__(self) -> str:
        """A password-free description for logs, e.g. ``rediss://user@cache.local:6380/2``."""
        user = f"{self.username}@" if self.username else ""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        return f"{'rediss' if self.ssl else 'redis'}://{user}{hosts}/{self.db}"

    @property
    def sentinel_username(self) -> str | None:
        """``sentinelUser``: the user the sentinels are asked as (``user`` is for the data nodes)."""
        return dict(self.options).get("sentinelUser") or None

    @property
    def sentinel_password(self) -> str | None:
        """``sentinelPassword``: the password of the sentinels (``requirepass``); ``password`` is the data nodes'."""
        return dict(self.options).get("sentinelPassword") or None

    def to_redis_kwargs(self, *, single_host: bool = True) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis(...)`` (single node only).

        Timeouts left unset in the string are omitted (redis-py's defaults apply);
        ``CacheSettings.redis_endpoint`` fills them from ``ConnectTimeoutMilliseconds`` and
        ``OperationTimeoutMilliseconds``. Plain data only: the clients the cache builds add
        ``retry=Retry(NoBackoff(), 0)`` (redis-py 6+ otherwise retries timeouts and connection errors up to 10
        times with backoff, which would hide a down Redis from the circuit breaker behind seconds of waiting); a
        client you build yourself for the cache should too. Raises :class:`CacheConfigurationError` for several
        hosts or a Sentinel ``serviceName``.
        """
        if single_host and (len(self.hosts) != 1 or self.service_name is not None or self.cluster):
            raise CacheConfigurationError(
                f"{self}: {len(self.hosts)} endpoint(s), serviceName={self.service_name!r}: not a single node; "
                "use hybridcache._redis.clients.connect for Cluster and Sentinel"
            )
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "ssl": self.ssl,
            "client_name": self.client_name,
            "health_check_interval": 0,
        }
        if single_host:
            ((kwargs["host"], kwargs["port"]),) = self.hosts
        if self.operation_timeout is not None:
            kwargs["socket_timeout"] = self.operation_timeout
        if self.connect_timeout is not None:
            kwargs["socket_connect_timeout"] = self.connect_timeout
        if self.protocol is not None:
            kwargs["protocol"] = self.protocol
        return kwargs


def _is_secret(option: str) -> bool:
    return option.lower().endswith("password")


def mask_configuration(text: str) -> str:
    """``text`` with every password replaced by ``***`` (both forms), for logs, reprs and error messages."""
    masked = re.sub(r"(?i)((?:^|,)\s*\w*password\s*=)[^,]*", r"\1***", text)
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:)[^@]*@", r"\1***@", masked)


def parse_redis_configuration(text: str, *, key: str = DEFAULT_KEY) -> RedisEndpointConfig:
    """Parse a StackExchange.Redis configuration string or a redis/rediss URL.

    StackExchange form: comma-separated ``host[:port]`` endpoints (IPv6 as ``[::1]:6379``) and
    case-insensitive ``option=value`` pairs. A host without a port gets 26379 with ``serviceName``
    (Sentinel), else 6380 with ``ssl=true``, else 6379, as StackExchange.Redis does. Timeouts there are in ms;
    ``asyncTimeout`` wins over ``syncTimeout`` for the operation timeout (our client is asyncio).
    URL form: ``redis[s]://[user:password@]host[:port][/db]`` with optional query options ``db``,
    ``protocol``, ``timeout``/``socket_timeout``, ``connect_timeout``/``socket_connect_timeout`` (seconds)
    and ``client_name``; its default port is 6379.
    Raises :class:`CacheConfigurationError` naming ``key`` on any malformed part.
    """
    text = text.strip()
    if not text:
        raise CacheConfigurationError(f"{key}: empty connection string; {_FORMS}")
    if "://" in text:
        return _parse_url(text, key)
    return _parse_stackexchange(text, key)


def _fail(key: str, problem: str) -> CacheConfigurationError:
    return CacheConfigurationError(f"{key}: {problem}; {_FORMS}")


def _port(text: str, key: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _fail(key, f"invalid port in {where}: expected an integer 1-65535")
    return int(text)


def _check_host(host: str, key: str, where: str) -> str:
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise _fail(key, f"invalid IPv6 address in {where}") from None
    if not _HOSTNAME.fullmatch(host):
        raise _fail(key, f"invalid host name in {where}")
    return host


def _endpoint(segment: str, key: str) -> tuple[str, int | None]:
    where = f"endpoint '{segment}'"
    if segment.startswith("["):
        host, bracket, rest = segment[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _fail(key, f"malformed {where}: expected [ipv6]:port")
        return _check_host(host, key, where), (_port(rest[1:], key, where) if rest else None)
    if segment.count(":") > 1:  # a bare IPv6 address, which cannot carry a port
        return _check_host(segment, key, where), None
    host, colon, port = segment.partition(":")
    return _check_host(host, key, where), (_port(port, key, where) if colon else None)


def _parse_stackexchange(text: str, key: str) -> RedisEndpointConfig:
    endpoints: list[tuple[str, int | None]] = []
    values: dict[str, str] = {}
    kinds: dict[str, str] = {}
    after_password = False
    for raw in text.split(","):
        segment = raw.strip()
        if not segment:
            continue
        name, equals, value = segment.partition("=")
        if not equals:
            try:
                endpoints.append(_endpoint(segment, key))
            except CacheConfigurationError:
                if after_password:  # most likely the tail of a password containing ','; never echo it
                    raise _fail(
                        key,
                        "a segment after 'password=' is neither host[:port] nor option=value "
                        "(a password cannot contain ',' in this form; use the URL form)",
                    ) from None
                raise
            continue
        option, kind = _SE_OPTIONS.get(name.strip().lower(), ("", ""))
        if not option:
            raise _fail(key, f"unknown option '{name.strip()}'")
        values[option] = value.strip()
        kinds[option] = kind
        after_password = after_password or option in ("password", "sentinelPassword")
    if not endpoints:
        raise _fail(key, "no endpoint (host[:port]) given")

    def flag(option: str, default: bool) -> bool:
        value = values.get(option)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise _fail(key, f"option '{option}' expected true or false, got {value!r}")
        return value.lower() == "true"

    def number(option: str) -> int | None:
        value = values.get(option)
        if value is None:
            return None
        if not value.isdigit():
            raise _fail(key, f"option '{option}' expected a non-negative integer, got {value!r}")
        return int(value)

    for option, kind in kinds.items():  # validate the parse-only options too
        _ = flag(option, False) if kind == "bool" else number(option) if kind == "int" else None
    ssl = flag("ssl", False)
    service_name = values.get("serviceName") or None
    default_port = 26379 if service_name else 6380 if ssl else 6379
    timeout = number("asyncTimeout")
    timeout = number("syncTimeout") if timeout is None else timeout
    connect = number("connectTimeout")
    return RedisEndpointConfig(
        hosts=tuple((host, default_port if port is None else port) for host, port in endpoints),
        username=values.get("user") or None,
        password=values.get("password") or None,
        ssl=ssl,
        db=number("defaultDatabase") or 0,
        client_name=values.get("name") or None,
        connect_timeout=None if connect is None else connect / 1000,
        operation_timeout=None if timeout is None else timeout / 1000,
        abort_connect=flag("abortConnect", True),
        ssl_host=values.get("sslHost") or None,
        service_name=service_name,
        protocol=_protocol(values.get("protocol"), key),
        options=tuple(sorted((k, v) for k, v in values.items() if k not in _MAPPED)),
    )


def _protocol(value: str | None, key: str) -> int | None:
    if value is None:
        return None
    digits = value.lower().removeprefix("resp")
    if digits not in ("2", "3"):
        raise _fail(key, f"option 'protocol' expected resp2, resp3, 2 or 3, got {value!r}")
    return int(digits)


def _seconds(name: str, value: str, key: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise _fail(key, f"URL option '{name}' expected a positive number of seconds, got {value!r}")
    return seconds


_MULTI_SCHEMES = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def _parse_multi_url(text: str, key: str) -> RedisEndpointConfig:
    """``redis+cluster://[user:pass@]h1:p1,h2:p2[/0]`` or ``redis+sentinel://[user:pass@]s1:p1,s2:p2/service[/db]``."""
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    rest, _, query = rest.partition("?")
    if query:
        raise _fail(key, f"{scheme} URLs take no query options; put timeouts in the section's keys")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts_text = netloc.rpartition("@")
    username = password = None
    if credentials:
        user_text, _, password_text = credentials.partition(":")
        username, password = unquote(user_text) or None, unquote(password_text) or None
    sentinel = scheme.endswith("+sentinel")
    default_port = 26379 if sentinel else 6379
    hosts = []
    for segment in hosts_text.split(","):
        host, port = _endpoint(segment.strip(), key)
        hosts.append((host, default_port if port is None else port))
    segments = [s for s in path.split("/") if s]
    service_name = None
    if sentinel:
        if not segments:
            raise _fail(
                key, "a redis+sentinel URL needs the service name as its path: redis+sentinel://host:26379/mymaster"
            )
        service_name = segments.pop(0)
    if len(segments) > 1 or (segments and not segments[0].isdigit()):
        raise _fail(key, f"URL path must end in a database number, got '/{path}'")
    return RedisEndpointConfig(
        hosts=tuple(hosts),
        username=username,
        password=password,
        ssl=scheme.startswith("rediss"),
        db=int(segments[0]) if segments else 0,
        service_name=service_name,
        cluster=not sentinel,
    )


def _parse_url(text: str, key: str) -> RedisEndpointConfig:
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in _MULTI_SCHEMES:
        return _parse_multi_url(text, key)
    if scheme not in ("redis", "rediss"):
        raise _fail(key, f"unsupported URL scheme '{parts.scheme}'")
    try:
        port = parts.port
    except ValueError:
        raise _fail(key, "invalid port in URL: expected an integer 1-65535") from None
    host = parts.hostname or ""
    if not host:
        raise _fail(key, "no host in URL")
    host = _check_host(host, key, "URL")
    db_text = parts.path.strip("/")
    if db_text and not db_text.isdigit():
        raise _fail(key, f"URL path must be a database number, got '/{db_text}'")
    found: dict[str, Any] = {"db": int(db_text) if db_text else 0}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        target = _URL_OPTIONS.get(name.lower())
        if target is None:
            raise _fail(key, f"unknown URL option '{name}' (known: {', '.join(_URL_OPTIONS)})")
        if target == "db":
            if not value.isdigit():
                raise _fail(key, f"URL option 'db' expected a non-negative integer, got {value!r}")
            found["db"] = int(value)
        elif target == "protocol":
            found["protocol"] = _protocol(value, key)
        elif target.endswith("timeout"):
            found[target] = _seconds(name, value, key)
        else:
            found[target] = value or None
    return RedisEndpointConfig(
        hosts=((host, 6379 if port is None else port),),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=scheme == "rediss",
        **found,
    )
