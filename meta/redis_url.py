"""Redis metadata URLs and the client each one names: a single server (`redis://`, TLS with
`rediss://`, a unix socket with `unix://`), a Sentinel-managed master, or a Cluster.

Sentinel, in either of two forms (both take `rediss://` / `rediss+sentinel://` for TLS to the
master and replicas; the Sentinel password, when the sentinels have one, comes from
$SENTINEL_PASSWORD, as with JuiceFS):

    redis+sentinel://[[user]:password@]host1:26379,host2:26379/MASTER_NAME[/DB]
    redis://[[user]:password@]MASTER_NAME,host1:26379,host2:26379[/DB]      (JuiceFS's form)

Cluster: any `redis://` URL of a cluster node (or several, comma-separated) is recognised at
connect time; a Cluster has database 0 only. Every key of a volume carries the volume's hash
tag, so a volume lives in one slot and its transactions stay legal there.

Query parameters of redis-py's URLs pass through (e.g. `?ssl_cert_reqs=none`,
`?ssl_ca_certs=/path/ca.pem` for a private CA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachefs.errors import ConfigError

SENTINEL_PORT = 26379
# our own retry layer (meta/retry.py) decides when to try again: the client must not retry on
# its own, or an outage's timing (and a commit's idempotence) would not be ours to control
_NO_RETRY = {"retry": Retry(NoBackoff(), 0)}
TIMEOUTS = {"socket_connect_timeout": 3, "socket_timeout": 5, "health_check_interval": 30}
_SSL_QUERY = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}


@dataclass
class RedisURL:
    kind: str  # "single" | "sentinel" | "cluster" (seeds given as a comma-separated list)
    url: str  # for "single": the URL redis-py understands
    master: str = ""
    nodes: list[tuple[str, int]] = field(default_factory=list)  # sentinels, or cluster seeds
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    query: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        if self.kind == "sentinel":
            return f"Redis master {self.master!r} (sentinels {','.join(f'{h}:{p}' for h, p in self.nodes)})"
        parts = urlsplit(self.url)
        if self.kind == "cluster":
            return f"Redis Cluster at {','.join(f'{h}:{p}' for h, p in self.nodes)}"
        if parts.scheme == "unix":
            return f"Redis at {parts.path}"
        return f"Redis at {parts.hostname or 'localhost'}:{_port(parts)}"


def _port(parts: Any) -> int:
    try:
        return parts.port or 6379
    except ValueError:
        raise ConfigError(f"bad Redis URL: the port of {parts.netloc.rpartition('@')[2]!r} is not a "
                          "number") from None


def _hostport(item: str, default: int) -> tuple[str, int]:
    host, sep, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
    if not sep:
        return item, default
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"bad Redis URL: the port of {item!r} is not a number from 1 to 65535")
    return host, int(port)


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ConfigError(f"bad Redis URL: database {text!r} is not a number")
    return int(text)


def parse(url: str) -> RedisURL:
    """A RedisURL, or a ConfigError naming what is wrong (the password never shown)."""
    parts = urlsplit(url)
    scheme = parts.scheme
    netloc = parts.netloc
    cred, _, hosts = netloc.rpartition("@")
    username = password = None
    if cred:
        user, _, pw = cred.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    query = dict(parse_qsl(parts.query))
    tls = scheme in ("rediss", "rediss+sentinel")
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigError("bad Redis Sentinel URL: expected redis+sentinel://host:port,.../MASTER_NAME[/DB]")
        sentinels = [_hostport(h, SENTINEL_PORT) for h in hosts.split(",") if h]
        if not sentinels:
            raise ConfigError("bad Redis Sentinel URL: no sentinel address")
        return RedisURL("sentinel", url, path[0], sentinels, _db(path[1] if len(path) > 1 else ""),
                        username, password, tls, query)
    if scheme in ("redis", "rediss") and "," in hosts:
        items = [h for h in hosts.split(",") if h]
        if items and ":" not in items[0] and all(":" in h for h in items[1:]) and len(items) > 1:
            # JuiceFS's form: the master's name, then the sentinels
            nodes = [_hostport(h, SENTINEL_PORT) for h in items[1:]]
            return RedisURL("sentinel", url, items[0], nodes, _db(parts.path.strip("/")), username, password, tls,
                            query)
        for h in items:
            _hostport(h, 6379)
        return RedisURL("cluster", url, nodes=[_hostport(h, 6379) for h in items],
                        db=_db(parts.path.strip("/")), username=username, password=password, tls=tls,
                        query=query)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"unknown Redis URL scheme {scheme!r}")
    if scheme != "unix":
        _port(parts)
        if not parts.hostname:
            raise ConfigError("bad Redis URL: no host")
        _db(parts.path.strip("/"))
    return RedisURL("single", url, db=_db(parts.path.strip("/")) if scheme != "unix" else 0,
                    username=username, password=password, tls=tls, query=query)


def _ssl_kwargs(u: RedisURL) -> dict[str, Any]:
    if not u.tls:
        return {}
    kw: dict[str, Any] = {"ssl": True}
    for key in _SSL_QUERY & set(u.query):
        value: Any = u.query[key]
        if key == "ssl_check_hostname":
            value = value.lower() in ("1", "true", "yes")
        kw[key] = value
    return kw


def connect(u: RedisURL, password_override: str | None = None) -> Any:
    """A redis-py client for the URL: redis.Redis (single, Sentinel master) or RedisCluster."""
    password = password_override or u.password
    if u.kind == "sentinel":
        from redis.sentinel import Sentinel

        sentinel_kw: dict[str, Any] = {"socket_connect_timeout": 3, "socket_timeout": 5}
        if os.environ.get("SENTINEL_PASSWORD"):
            sentinel_kw["password"] = os.environ["SENTINEL_PASSWORD"]
        sentinel = Sentinel(u.nodes, sentinel_kwargs=sentinel_kw, **_NO_RETRY)
        return sentinel.master_for(u.master, db=u.db, username=u.username, password=password,
                                   **TIMEOUTS, **_NO_RETRY, **_ssl_kwargs(u))
    if u.kind == "cluster":
        return _cluster(u, password, u.nodes)
    try:
        kw: dict[str, Any] = dict(TIMEOUTS, **_NO_RETRY)
        if password_override:
            kw["password"] = password_override
        client = redis.Redis.from_url(u.url, **kw)
    except ValueError as e:
        raise ConfigError(f"bad Redis URL: {e}") from None
    return client


def cluster_of(u: RedisURL, client: Any, password_override: str | None = None) -> Any:
    """The Cluster client when the server of a single URL is a Cluster node, else client."""
    try:
        info = client.info("cluster")
    except redis.ResponseError:
        return client
    if not info.get("cluster_enabled"):
        return client
    if u.db:
        raise ConfigError("a Redis Cluster has database 0 only: drop the /DB from the URL")
    parts = urlsplit(u.url)
    client.close()
    return _cluster(u, password_override or u.password, [(parts.hostname, _port(parts))])


def _cluster(u: RedisURL, password: str | None, nodes: list[tuple[str, int]]) -> Any:
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], username=u.username,
                        password=password, socket_connect_timeout=3, socket_timeout=5,
                        # a few immediate tries follow MOVED/ASK redirections while slots move;
                        # a node that stays away is an outage, for meta/retry.py
                        retry=Retry(NoBackoff(), 3), **_ssl_kwargs(u))
