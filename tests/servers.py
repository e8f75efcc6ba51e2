"""Real servers on free loopback ports for the tests: redis-server and an S3 endpoint."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port(below: int = 65536) -> int:
    """A free loopback port (below `below`: a cluster node's bus listens 10000 higher)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < below:
            return port


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30, host: str = "127.0.0.1") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A redis-server of the tests' own; durable=True keeps an AOF, so that kill() and start()
    again come back with every acknowledged write (Redis writes the AOF before it answers)."""

    def __init__(self, databases: int = 1024, extra: list[str] | None = None, durable: bool = False,
                 port: int | None = None, host: str = "127.0.0.1") -> None:
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="cachefs-redis-")
        self.host = host
        self.port = port or free_port()
        self.args = ["--port", str(self.port), "--bind", host, "--save", "",
                     "--appendonly", "yes" if durable else "no", "--databases", str(databases),
                     "--dir", self.dir, "--daemonize", "no", *(extra or [])]
        self.start()
        self._next_db = 0

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server", host=self.host)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        self.proc.kill()
        self.proc.wait()

    def url(self, db: int | None = None) -> str:
        if db is None:
            db = self._next_db
            self._next_db += 1
        return f"redis://{self.host}:{self.port}/{db}"

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class S3Server:
    """moto's server mode: a real HTTP S3 endpoint, in its own process."""

    def __init__(self, env: dict | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        penv = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=penv, start_new_session=True,
        )
        _wait_port(self.port, self.proc, "moto S3 server")
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).read()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def bucket_url(self, bucket: str) -> str:
        return f"{self.endpoint}/{bucket}"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        _stop(self.proc)


class SentinelGroup:
    """A Redis master, a replica and three sentinels on loopback (each on its own address);
    kill_master() makes the sentinels promote the replica."""

    MASTER = "cachefs-master"

    def __init__(self) -> None:
        self.exe = shutil.which("redis-sentinel")
        if self.exe is None:
            raise RuntimeError("redis-sentinel is not installed (apt-get install redis-sentinel)")
        self.master = RedisServer(databases=16, durable=True, host="127.0.0.2")
        # each announces its own address: the master would otherwise tell the sentinels the
        # replica's source address of its connection (127.0.0.1), where nothing listens
        self.replica = RedisServer(databases=16, durable=True, host="127.0.0.3",
                                   extra=["--replicaof", "127.0.0.2", str(self.master.port),
                                          "--replica-announce-ip", "127.0.0.3"])
        self.dir = tempfile.mkdtemp(prefix="cachefs-sentinel-")
        self.sentinels: list[tuple[subprocess.Popen, int]] = []
        for i in range(3):
            port = free_port()
            conf = os.path.join(self.dir, f"sentinel{i}.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.{4 + i}\ndir {self.dir}\nsentinel announce-ip 127.0.0.{4 + i}\n"
                        f"sentinel monitor {self.MASTER} 127.0.0.2 {self.master.port} 2\n"
                        f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                        f"sentinel failover-timeout {self.MASTER} 10000\n"
                        f"sentinel parallel-syncs {self.MASTER} 1\n")
            proc = subprocess.Popen([self.exe, conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_port(port, proc, "redis-sentinel", host=f"127.0.0.{4 + i}")
            self.sentinels.append((proc, port))
        self._wait_replica()

    def _wait_replica(self, timeout: float = 30) -> None:
        import redis

        r = redis.Redis(host="127.0.0.3", port=self.replica.port)
        deadline = time.time() + timeout
        while r.info("replication").get("master_link_status") != "up":
            if time.time() > deadline:
                raise RuntimeError("the replica did not sync with the master")
            time.sleep(0.1)

    def url(self, db: int = 1) -> str:
        hosts = ",".join(f"127.0.0.{4 + i}:{port}" for i, (_, port) in enumerate(self.sentinels))
        return f"redis+sentinel://{hosts}/{self.MASTER}/{db}"

    def master_address(self) -> tuple[str, int]:
        import redis

        proc, port = self.sentinels[0]
        host, p = redis.Redis(host="127.0.0.4", port=port).sentinel_get_master_addr_by_name(self.MASTER)
        return host.decode() if isinstance(host, bytes) else host, int(p)

    def kill_master(self) -> None:
        self.master.kill()

    def stop(self) -> None:
        for proc, _ in self.sentinels:
            _stop(proc)
        self.master.stop()
        self.replica.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three cluster-mode masters on loopback, their slots assigned (no replicas)."""

    def __init__(self) -> None:
        self.nodes = [RedisServer(databases=1, port=free_port(below=55535),
                                  extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                         "--cluster-node-timeout", "2000"])
                      for _ in range(3)]
        res = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                              "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {res.stdout}{res.stderr}")
        import redis

        deadline = time.time() + 30
        for n in self.nodes:
            r = redis.Redis(port=n.port)
            while r.cluster("info").get("cluster_state") != "ok":
                if time.time() > deadline:
                    raise RuntimeError("the cluster did not become ready")
                time.sleep(0.1)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def flush(self) -> None:
        import redis

        for n in self.nodes:
            redis.Redis(port=n.port).flushall()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
