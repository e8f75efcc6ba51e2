"""Training reads without FUSE: a torch DataLoader over ImageNet-like files, and a checkpoint save,
through every path, all in one run against one S3 server (bench/s3server.py).

    python bench/dataloader.py                       # 4000 files of ~110 KB, 3 rounds
    python bench/dataloader.py --files 300 --rounds 1 --big 64 --ckpt 64 --no-results    # smoke

Targets, interleaved round by round:
- "cachefs FUSE": a plain file-reading dataset on a cachefs mount;
- "cachefs.torch": cachefs.torch.MapDataset through an in-process cachefs.Client that keeps its
  own disk cache (DataLoader workers read it as cacheview.py describes);
- "JuiceFS FUSE": the same plain dataset on a JuiceFS mount;
- "s3torchconnector": S3MapDataset over the same layout as plain objects in a bucket (no cache);
- "local dir": the same plain dataset on the local disk, page cache dropped: the disk's own speed,
  which bounds every warm row (their caches are on the same disk).

`--targets fuse,torch,juicefs,s3torchconnector,local` picks a subset (RESULTS.md is then left alone).

Jobs: one shuffled epoch with 0, 4 and 8 workers, cold (every cache emptied, the kernel's page,
dentry and inode caches dropped) then warm (local caches kept, page cache dropped; dentries and
inodes kept, as a training node has them between epochs of a dataset larger than memory); a
1 GiB file read in 4 MiB chunks in random order, cold and warm; a checkpoint: a 1 GiB state dict
saved by cachefs.torch.save through a write-back client, by torch.save onto the cachefs
write-back mount, onto the JuiceFS --writeback mount and onto a local directory: seconds until
save returns, and until the checkpoint is in the object store (cachefs: `flush`; JuiceFS: its
staging drained; local dir: after os.sync()).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from bench.results import replace_section  # noqa: E402
from bench.s3server import KEY, SECRET, Gateway  # noqa: E402
from bench.targets import Cachefs, JuiceFS, drop_caches, set_aside, sh  # noqa: E402
from cachefs import Client  # noqa: E402
from cachefs.torch import MapDataset  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

MiB = 1 << 20
BATCH = 32
CHUNK = 4 * MiB
TARGETS = ("fuse", "torch", "juicefs", "s3torchconnector", "local")  # --targets names, in table order


def ensure_s3torchconnector() -> bool:
    try:
        import s3torchconnector  # noqa: F401
    except ImportError:
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "s3torchconnector"], capture_output=True,
                             text=True)
        if res.returncode != 0:
            print(f"s3torchconnector not available: {res.stderr.strip()[-200:]}", file=sys.stderr)
            return False
    return True


class Files(Dataset):
    """The plain dataset a FUSE user writes: open, read, close."""

    def __init__(self, root: str, names: list[str]) -> None:
        self.paths = [os.path.join(root, n) for n in names]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        with open(self.paths[i], "rb") as f:
            return len(f.read())


def _size(item) -> int:
    return len(item.read())


def _sum(batch: list[int]) -> int:
    return sum(batch)


def epoch(ds: Dataset, workers: int, seed: int) -> tuple[float, int, int]:
    """(seconds, items, bytes) of one shuffled pass."""
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=g, num_workers=workers, collate_fn=_sum)
    t0 = time.perf_counter()
    total = sum(loader)
    took = time.perf_counter() - t0
    return took, len(ds), total


def read_file_chunks(path: str, order: list[int]) -> int:
    """Bytes read from the file in CHUNK pieces, in this order (the large-file job)."""
    n = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in order:
            n += len(os.pread(fd, CHUNK, i * CHUNK))
    finally:
        os.close(fd)
    return n


class Runner:
    """One target's datasets, cold and warm."""

    name = ""

    def dataset(self) -> Dataset: ...

    def make_cold(self) -> None:
        """Every cache emptied (a target with none of its own: the page cache dropped)."""
        drop_caches()

    def make_warm(self) -> None:
        """Local cache kept, page cache dropped (dentries and inodes kept, as between epochs)."""
        drop_caches(pages_only=True)

    def read_chunks(self, order: list[int]) -> int: ...

    def save(self, sd: dict) -> tuple[float, float]: ...

    def close(self) -> None: ...


class FuseRunner(Runner):
    def __init__(self, name: str, target, names: list[str], writeback) -> None:
        self.name, self.target, self.names, self.writeback = name, target, names, writeback

    def dataset(self) -> Dataset:
        return Files(os.path.join(self.target.mountpoint, "train"), self.names)

    def make_cold(self) -> None:
        self.target.make_cold()

    def make_warm(self) -> None:
        self.target.wait_warm()  # JuiceFS writes its cache entries after the read returned
        drop_caches(pages_only=True)

    def read_chunks(self, order: list[int]) -> int:
        return read_file_chunks(os.path.join(self.target.mountpoint, "big.bin"), order)

    def save(self, sd: dict) -> tuple[float, float]:
        path = os.path.join(self.writeback.mountpoint, "ckpt", f"{time.monotonic_ns()}.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.perf_counter()
        torch.save(sd, path)
        returned = time.perf_counter() - t0
        if isinstance(self.writeback, JuiceFS):
            while self.writeback.staged_bytes() > 0:
                time.sleep(0.05)
        else:
            self.writeback.flush()
        durable = time.perf_counter() - t0
        os.unlink(path)
        return returned, durable

    def close(self) -> None:
        self.target.teardown()
        if self.writeback is not None:
            self.writeback.teardown()


class ClientRunner(Runner):
    name = "cachefs.torch"

    def __init__(self, url: str, work: str) -> None:
        self.url, self.cache = url, os.path.join(work, "client-cache")
        self.wb_cache = os.path.join(work, "client-wb-cache")
        self.client: Client | None = None
        self.make_cold()

    def _open(self) -> Client:
        return Client(self.url, cache_dir=self.cache, cache_size=64 << 30)

    def dataset(self) -> Dataset:
        return MapDataset.from_prefix("cachefs://train/", client=self.client, transform=_size)

    def make_cold(self) -> None:
        if self.client is not None:
            self.client.close()
        set_aside(self.cache)
        drop_caches()
        self.client = self._open()

    def make_warm(self) -> None:
        """A new training process's view: the disk cache kept, the client's memory gone."""
        if self.client is not None:
            self.client.close()
        drop_caches(pages_only=True)
        self.client = self._open()

    def read_chunks(self, order: list[int]) -> int:
        from cachefs.client import RawFile

        n = 0
        with RawFile(self.client, "/big.bin", "rb") as f:
            for i in order:
                n += len(f.pread(i * CHUNK, CHUNK))
        return n

    def save(self, sd: dict) -> tuple[float, float]:
        from cachefs.torch import save

        path = f"/ckpt/{time.monotonic_ns()}.pt"
        with Client(self.url, writeback=True, cache_dir=self.wb_cache, cache_size=64 << 30) as c:
            c.makedirs("/ckpt", exist_ok=True)
            t0 = time.perf_counter()
            save(sd, path, client=c)
            returned = time.perf_counter() - t0
            c.flush()
            durable = time.perf_counter() - t0
            c.remove(path)
        return returned, durable

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class S3Runner(Runner):
    name = "s3torchconnector"

    def __init__(self, endpoint: str, bucket: str) -> None:
        from s3torchconnector import S3ClientConfig

        self.endpoint, self.bucket = endpoint, bucket
        self.config = S3ClientConfig(force_path_style=True)

    def dataset(self) -> Dataset:
        from s3torchconnector import S3MapDataset

        return S3MapDataset.from_prefix(f"s3://{self.bucket}/train/", region="us-east-1", endpoint=self.endpoint,
                                        transform=_size, s3client_config=self.config)

    def read_chunks(self, order: list[int]) -> int:
        from s3torchconnector import S3ReaderConstructor
        from s3torchconnector._s3client import S3Client

        client = S3Client("us-east-1", endpoint=self.endpoint, s3client_config=self.config)
        reader = client.get_object(self.bucket, "big.bin", reader_constructor=S3ReaderConstructor.range_based())
        n = 0
        for i in order:
            reader.seek(i * CHUNK)
            n += len(reader.read(CHUNK))
        return n


class LocalRunner(Runner):
    """The plain dataset on the local disk: what reading the data costs with no file system of
    ours in between (cold and warm alike: the page cache dropped, the disk's speed), the ceiling
    of any warm row, whose cache is on the same disk."""

    name = "local dir"

    def __init__(self, root: str, names: list[str]) -> None:
        self.root, self.names = root, names

    def dataset(self) -> Dataset:
        return Files(os.path.join(self.root, "train"), self.names)

    def read_chunks(self, order: list[int]) -> int:
        return read_file_chunks(os.path.join(self.root, "big.bin"), order)


def local_save(sd: dict, work: str) -> tuple[float, float]:
    path = os.path.join(work, "local-ckpt.pt")
    t0 = time.perf_counter()
    torch.save(sd, path)
    returned = time.perf_counter() - t0
    os.sync()
    durable = time.perf_counter() - t0
    os.unlink(path)
    return returned, durable


def state_dict(mib: int) -> dict:
    g = torch.Generator().manual_seed(0)
    n = max(1, mib // 16)
    return {f"layer{i}.weight": torch.randn(1024, 4096, generator=g) for i in range(n)}  # 16 MiB each


def write_dataset(root: str, names: list[str], size: int, big_mib: int) -> None:
    """The same bytes on every target: files seeded by their index."""
    for i, n in enumerate(names):
        path = os.path.join(root, "train", n)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(random.Random(i).randbytes(size + i % 1000))
    with open(os.path.join(root, "big.bin"), "wb") as f:
        rnd = random.Random(-1)
        for _ in range(big_mib):
            f.write(rnd.randbytes(MiB))


def upload_dataset(s3: Gateway, bucket: str, src: str, names: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    s3.make_bucket(bucket)
    c = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                     aws_secret_access_key=SECRET)
    keys = [f"train/{n}" for n in names] + ["big.bin"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: c.upload_file(os.path.join(src, k), bucket, k), keys))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=4000, help="files in the dataset (default 4000)")
    ap.add_argument("--file-size", type=int, default=110_000, help="bytes per file (default 110000)")
    ap.add_argument("--workers", default="0,4,8", help="DataLoader worker counts (default 0,4,8)")
    ap.add_argument("--big", type=int, default=1024, help="MiB of the large file (default 1024)")
    ap.add_argument("--ckpt", type=int, default=1024, help="MiB of the checkpoint (default 1024)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated subset of {','.join(TARGETS)} (default all)")
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    a = ap.parse_args()
    wanted = a.targets.split(",")
    if unknown := [t for t in wanted if t not in TARGETS]:
        print(f"bench/dataloader.py: unknown target {unknown[0]!r} (choose from {', '.join(TARGETS)})",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/dataloader.py: run as root (it mounts file systems)", file=sys.stderr)
        return 1
    has_s3t = "s3torchconnector" in wanted and ensure_s3torchconnector()
    workers = [int(w) for w in a.workers.split(",")]
    work = tempfile.mkdtemp(prefix="cachefs-dl-")
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1")
    redis, s3 = RedisServer(databases=8), Gateway()
    names = [f"class{i % 100:03d}/img{i:06d}.jpg" for i in range(a.files)]
    results: dict[str, dict[str, list[float]]] = {}
    runners: list[Runner] = []
    fuse: FuseRunner | None = None

    def record(target: str, job: str, value: float) -> None:
        results.setdefault(job, {}).setdefault(target, []).append(value)

    try:
        src = os.path.join(work, "src")
        print("writing the dataset", flush=True)
        write_dataset(src, names, a.file_size, a.big)
        cfs = Cachefs("cachefs FUSE", os.path.join(work, "cfs"), redis.url(1), work)
        cfs_wb = Cachefs("cachefs wb", os.path.join(work, "cfs-wb"), redis.url(1), work, ["--writeback"])
        cfs.setup(s3)
        os.makedirs(cfs_wb.mountpoint, exist_ok=True)
        cfs_wb._mount()
        mounts = [cfs]
        if "juicefs" in wanted:
            jfs = JuiceFS("JuiceFS FUSE", os.path.join(work, "jfs"), redis.url(2), work)
            jfs_wb = JuiceFS("JuiceFS wb", os.path.join(work, "jfs-wb"), redis.url(2), work, ["--writeback"])
            jfs.setup(s3)
            os.makedirs(jfs_wb.mountpoint, exist_ok=True)
            jfs_wb._mount()
            mounts.append(jfs)
        for t in mounts:
            sh("cp", "-r", os.path.join(src, "train"), os.path.join(src, "big.bin"), t.mountpoint + "/")
        cfs.flush()
        fuse = FuseRunner("cachefs FUSE", cfs, names, cfs_wb)
        if "fuse" in wanted:
            runners.append(fuse)
        if "torch" in wanted:
            runners.append(ClientRunner(redis.url(1), work))
        if "juicefs" in wanted:
            runners.append(FuseRunner("JuiceFS FUSE", jfs, names, jfs_wb))
        if has_s3t:
            upload_dataset(s3, "s3t", src, names)
            runners.append(S3Runner(s3.endpoint, "s3t"))
        if "local" in wanted:
            runners.append(LocalRunner(src, names))
        else:
            set_aside(src)  # the dataset's source files: deleted at the end with the rest
        sd = state_dict(a.ckpt)
        chunks = a.big * MiB // CHUNK
        for rnd in range(a.rounds):
            print(f"== round {rnd + 1}", flush=True)
            for r in runners:
                line = []
                for w in workers:
                    r.make_cold()
                    took, items, nbytes = epoch(r.dataset(), w, seed=rnd)
                    record(r.name, f"{w} workers, cold: items/s", items / took)
                    record(r.name, f"{w} workers, cold: MB/s", nbytes / took / 1e6)
                    r.make_warm()
                    took, items, nbytes = epoch(r.dataset(), w, seed=rnd + 100)
                    record(r.name, f"{w} workers, warm: items/s", items / took)
                    record(r.name, f"{w} workers, warm: MB/s", nbytes / took / 1e6)
                    line.append(f"{w}w {results[f'{w} workers, cold: items/s'][r.name][-1]:.0f}/"
                                f"{items / took:.0f}")
                order = list(range(chunks))
                random.Random(rnd).shuffle(order)
                r.make_cold()
                t0 = time.perf_counter()
                assert r.read_chunks(order) == a.big * MiB
                record(r.name, "4 MiB random chunks of a large file, cold: MiB/s", a.big / (time.perf_counter() - t0))
                r.make_warm()
                t0 = time.perf_counter()
                r.read_chunks(order)
                record(r.name, "4 MiB random chunks of a large file, warm: MiB/s", a.big / (time.perf_counter() - t0))
                if not isinstance(r, (S3Runner, LocalRunner)):
                    returned, durable = r.save(sd)
                    record(r.name, "checkpoint save: seconds until it returns", returned)
                    record(r.name, "checkpoint save: seconds until in the object store", durable)
                print(f"   {r.name}: items/s cold/warm {', '.join(line)}", flush=True)
            returned, durable = local_save(sd, work)
            record("local dir", "checkpoint save: seconds until it returns", returned)
            record("local dir", "checkpoint save: seconds until in the object store", durable)
    finally:
        if fuse is not None and fuse not in runners:
            runners.append(fuse)  # its mounts hold the dataset; torn down like the others
        for r in runners:
            try:
                r.close()
            except Exception as e:  # noqa: BLE001 - tear the others down too
                print(f"closing {r.name}: {e}", file=sys.stderr)
        s3.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = render(results, list(dict.fromkeys([r.name for r in runners] + ["local dir"])))
    print(table)
    if not a.no_results and len(wanted) < len(TARGETS):
        print("(a subset of the targets: bench/RESULTS.md left alone)")
    elif not a.no_results:
        replace_section("dataloader", f"""## Training reads without FUSE (`bench/dataloader.py`)

Measured by `python bench/dataloader.py --files {a.files} --rounds {a.rounds} --big {a.big} --ckpt {a.ckpt}` on
{time.strftime('%Y-%m-%d')} (2 cores): {a.files} files of ~{a.file_size // 1000} KB in 100 directories read in
shuffled order by a torch DataLoader (batch {BATCH}); S3: {Gateway.name}. Medians of {a.rounds} rounds; ratios
against the cachefs.torch column where it applies. Checkpoint: {a.ckpt} MiB state dict. Cold: every
cache emptied, the kernel's page, dentry and inode caches dropped; warm: local caches kept, the page
cache dropped (`echo 1 > drop_caches`: dentries and inodes kept, as between epochs).

{table}
""")
    return 0


def render(results: dict[str, dict[str, list[float]]], targets: list[str]) -> str:
    shown = [t for t in targets if any(t in v for v in results.values())]
    others = ("cachefs FUSE", "JuiceFS FUSE", "s3torchconnector", "local dir")
    lines = ["| job | " + " | ".join(shown) + f" | cachefs.torch vs {' / '.join(others)} |",
             "|---|" + "---|" * (len(shown) + 1)]
    for job, by in results.items():
        med = {t: statistics.median(v) for t, v in by.items()}
        cells = [f"{med[t]:.1f}" if t in med else "" for t in shown]
        ours = med.get("cachefs.torch")
        ratios = []
        for other in others:
            if ours is None or other not in med or not med[other]:
                ratios.append("-")
            elif "seconds" in job:
                ratios.append(f"{med[other] / ours:.2f}x")
            else:
                ratios.append(f"{ours / med[other]:.2f}x")
        lines.append(f"| {job} | " + " | ".join(cells) + " | " + " / ".join(ratios) + " |")
    if "local dir" in shown and "cachefs.torch" in shown:
        job = "checkpoint save: seconds until it returns"
        if job in results:
            ours = statistics.median(results[job]["cachefs.torch"])
            local = statistics.median(results[job]["local dir"])
            lines.append(f"| cachefs.torch save / local dir save | {ours / local:.2f}x |" + " |" * len(shown))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
