"""A real Redis Cluster for the tests: six redis-server processes (three primaries, three replicas)
on free loopback ports in a temporary folder, joined by `redis-cli --cluster create`.

A missing redis-server or redis-cli, a node that exits, or a cluster that does not reach
cluster_state:ok is a test failure that says why, never a skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from split_infer.apps.processes import free_port
from split_infer.redisconn import connect
from support.processes import Services, require_binary
from support.wait import wait_for

NODES, REPLICAS = 6, 1
INSTALL = "apt-get install -y redis-server (it ships redis-cli)"


class LocalCluster:
    def __init__(self, tmp: Path, nodes: int = NODES, replicas: int = REPLICAS) -> None:
        self.server = require_binary("redis-server", INSTALL)
        self.cli = require_binary("redis-cli", INSTALL)
        self.dir, self.replicas = tmp, replicas
        # Each node needs a client port and a cluster-bus port; the bus port is set explicitly
        # (cluster-port), since the default (port + 10000) may be taken or out of range.
        self.ports: list[int] = []
        self.bus_ports: list[int] = []
        while len(self.ports) < nodes:
            port, bus = free_port(), free_port()
            if len({port, bus, *self.ports, *self.bus_ports}) == 2 * len(self.ports) + 2:
                self.ports.append(port)
                self.bus_ports.append(bus)
        self.services = Services(tmp)

    @property
    def url(self) -> str:
        """The cluster URL the services take (two seeds: either one is enough to find the rest)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=5)

    def start(self) -> None:
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            node_dir = self.dir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.services.spawn(f"redis-{port}", [
                self.server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no", "--daemonize", "no"])
        for port in self.ports:
            wait_for(lambda p=port: self._answers(p), 15, f"cluster node redis-server on port {port}")
        create = subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas",
             str(self.replicas), "--cluster-yes"], capture_output=True, text=True, timeout=120)
        if create.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed ({create.returncode}):\n{create.stdout[-3000:]}"
                        f"\n{create.stderr[-2000:]}")
        wait_for(self._ok, 60, "every cluster node to report cluster_state:ok with all 16384 slots")

    def _answers(self, port: int) -> bool:
        dead = [n for n in self.services.dead() if n.startswith("redis-")]
        if dead:
            pytest.fail(f"cluster node {dead[0]} exited:\n{self.services.log_tail(dead[0])}")
        try:
            return bool(self.node(port).ping())
        except redis.RedisError:
            return False

    def _ok(self) -> bool:
        for port in self.ports:
            self._answers(port)
            info = self.node(port).cluster("info")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
        return True

    def client(self) -> RedisCluster:
        client = connect(self.url, socket_connect_timeout=2, socket_timeout=10)
        assert isinstance(client, RedisCluster)
        return client

    def primaries(self) -> list[int]:
        """The ports of the primary nodes."""
        return sorted(n.port for n in self.client().get_primaries())

    def flush(self) -> None:
        """Empty every primary (their replicas follow), between tests sharing the cluster."""
        self.client().flushall()

    def stop(self) -> None:
        self.services.kill_all()
