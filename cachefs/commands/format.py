"""`cachefs format META_URL NAME`: create a volume (store its settings, check the object store)."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import uuid

from cachefs.block import BLOCK_FORMAT
from cachefs.errors import ConfigError
from cachefs.options import parse_size

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("format", help="create a volume", description="Create (format) a volume: store its "
                       "settings in the metadata engine and check the object store.")
    p.add_argument("meta_url", metavar="META_URL", help="redis://[[user]:password@]host:port/db or sqlite3://PATH")
    p.add_argument("name", metavar="NAME", help="volume name (letters, digits, . _ -)")
    p.add_argument("--storage", choices=["file", "s3"], default="file", help="object store kind (default file)")
    p.add_argument("--bucket", default="", help="s3: http(s)://host:port/BUCKET or s3://BUCKET; file: a directory "
                   "(default /var/lib/cachefs/objects)")
    p.add_argument("--endpoint", default="", help="S3 endpoint URL, with --bucket s3://BUCKET")
    p.add_argument("--region", default="", help="S3 region")
    p.add_argument("--access-key", default="", help="S3 access key (default $AWS_ACCESS_KEY_ID)")
    p.add_argument("--secret-key", default="", help="S3 secret key (default $AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--block-size", default="4M", help="block size, 64K to 16M (default 4M)")
    p.add_argument("--compress", choices=["lz4", "none"], default="none", help="block compression")
    p.add_argument("--force", action="store_true", help="replace an existing volume's settings")


def run(a: argparse.Namespace) -> int:
    from cachefs.meta import open_meta
    from cachefs.meta.types import Settings
    from cachefs.metrics import Metrics
    from cachefs.objects import open_store

    if not NAME_RE.match(a.name):
        raise ConfigError(f"bad volume name {a.name!r}: use letters, digits, '.', '_' and '-' (up to 63)")
    bs = parse_size(a.block_size)
    if bs < 64 << 10 or bs > 16 << 20:
        raise ConfigError("--block-size must be between 64K and 16M")
    bucket = a.bucket
    if a.storage == "file":
        bucket = os.path.abspath(bucket or "/var/lib/cachefs/objects")
    elif not bucket:
        raise ConfigError("--storage s3 needs --bucket http(s)://host:port/BUCKET or s3://BUCKET")
    if a.storage == "s3":
        from cachefs.objects.s3 import parse_bucket

        parse_bucket(bucket, a.endpoint)
    settings = Settings(name=a.name, uuid=str(uuid.uuid4()), storage=a.storage, bucket=bucket,
                        endpoint=a.endpoint, access_key=a.access_key, secret_key=a.secret_key,
                        region=a.region, block_size=bs, compression=a.compress, block_format=BLOCK_FORMAT,
                        group_secret=secrets.token_hex(32))
    meta = open_meta(a.meta_url)
    try:
        old = meta.is_formatted()
        if old is not None and not a.force:
            raise ConfigError(f"volume {old.name!r} is already formatted here (use --force to replace it)")
        open_store(settings, Metrics()).create()
        meta.format(settings, force=a.force)
    finally:
        meta.close_engine()
    print(f"cachefs: formatted volume {a.name!r} (uuid {settings.uuid}, {a.storage} storage, "
          f"block size {bs >> 10} KiB, compression {a.compress})")
    return 0
