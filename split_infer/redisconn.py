"""One factory for every service's Redis client: a single server, or a Redis Cluster.

The URL decides, in one place for the ingest, workers, analytics, API and demo:

- `redis://[user:password@]host:port/db` (`rediss://` for TLS): one server, redis-py's `Redis`;
- `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS): a
  Redis Cluster, redis-py's `RedisCluster`. The hosts are seeds: the client asks them for the slot
  map and then talks to every primary itself. A cluster has only database 0, so a path other
  than `/0` is an error.

The key layout puts each camera's keys in one hash slot (split_infer/keys.py); the few things a
cluster does differently (reads over many streams, publishing) live in split_infer/streams.py.
This module imports redis only inside the factories: the config validates URLs with it on the
edge, which has no redis-py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

# Scheme in the URL -> the plain scheme redis-py parses (the cluster marker taken off).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SINGLE_SCHEMES = ("redis", "rediss", "unix")


class RedisUrlError(ValueError):
    """A Redis URL this project cannot use; the message says why and what is accepted."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: `url` is what redis-py's from_url takes (for a cluster, the first seed);
    `seeds` are every seed (host, port) of a cluster."""

    url: str
    cluster: bool
    seeds: tuple[tuple[str, int], ...] = ()


def parse_redis_url(url: str) -> RedisTarget:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        return RedisTarget(url, cluster=False)
    if scheme not in CLUSTER_SCHEMES:
        raise RedisUrlError(f"redis_url must start with redis://, rediss://, unix://, redis+cluster:// or "
                            f"rediss+cluster://, not {scheme + '://' if scheme else 'no scheme'}")
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = tuple(_seed(h) for h in hosts.split(","))
    if parts.path not in ("", "/", "/0"):
        raise RedisUrlError(f"a Redis Cluster has only database 0; remove {parts.path!r} from the cluster URL")
    host, port = seeds[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    first = urlunsplit((CLUSTER_SCHEMES[scheme], netloc, "", parts.query, ""))
    return RedisTarget(first, cluster=True, seeds=seeds)


def _seed(hostport: str) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(f"cluster seed {hostport!r} is not host:port")
    return host.strip("[]"), int(port)


def check_redis_url(url: str) -> str:
    """`url` if it is usable (the configs' validator), else RedisUrlError."""
    parse_redis_url(url)
    return url


def connect(url: str, **options: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A client of the Redis (or Redis Cluster) at `url`; `options` are redis-py's (timeouts...).

    A cluster client reads the slot map now, so an unreachable cluster is a redis ConnectionError
    here (a single server's client connects at its first command)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException

    target = parse_redis_url(url)
    if not target.cluster:
        return redis.Redis.from_url(url, **options)
    try:
        return RedisCluster.from_url(target.url, startup_nodes=[ClusterNode(h, p) for h, p in target.seeds[1:]],
                                     **options)
    except RedisClusterException as e:  # not a RedisError: the services' outage handling would miss it
        raise redis.ConnectionError(str(e)) from e


def connect_async(url: str, **options: Any) -> aioredis.Redis | aioredis.RedisCluster:
    """The same on redis.asyncio (the ingest and the API); it connects at its first command."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode

    target = parse_redis_url(url)
    if not target.cluster:
        return aioredis.Redis.from_url(url, **options)
    options.pop("retry_on_timeout", None)  # not an option of the asyncio RedisCluster: its `retry` decides
    return _async_cluster_class().from_url(target.url,
                                          startup_nodes=[ClusterNode(h, p) for h, p in target.seeds[1:]], **options)


@functools.cache
def _async_cluster_class() -> type[aioredis.RedisCluster]:
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisClusterException

    class AsyncCluster(aioredis.RedisCluster):
        """The asyncio RedisCluster, whose "no node reachable" (raised when it reads the slot map: at
        its first command, or after losing every node) is a ConnectionError, as a single server's
        is: the ingest answers RETRY and the API 503, as with one Redis."""

        async def initialize(self, *args: Any, **kwargs: Any) -> AsyncCluster:
            try:
                await super().initialize(*args, **kwargs)
            except RedisClusterException as e:
                raise RedisConnectionError(str(e)) from e
            return self

    return AsyncCluster


def is_cluster(client: object) -> bool:
    """Whether `client` (a client or a pipeline of one, sync or asyncio) talks to a Redis Cluster."""
    from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster | AsyncRedisCluster | AsyncClusterPipeline)
