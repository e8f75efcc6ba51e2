"""S3 (and S3-compatible servers), path-style, with our own retry policy: blocks go through
signed HTTP requests (s3_http), bucket checks and listings through boto3."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bce
from botocore.config import Config
from botocore.credentials import Credentials

from cachefs.errors import ConfigError, ObjectError, ObjectNotFound, ObjectUnavailable
from cachefs.metrics import Metrics

from .base import RETRY_TIMEOUT, ObjectInfo, ObjectStore, Transient
from .s3_http import HTTPFailure, NoCredentials, SignedHTTP

_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed", "503", "500", "502", "504"}
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
               "ExpiredToken"}
CHECK_TIMEOUT = 8.0  # seconds the bucket checks of format and mount try through transient failures
_NETWORK = (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
            bce.ConnectionClosedError, bce.ResponseStreamingError)


def parse_bucket(bucket: str, endpoint: str = "") -> tuple[str, str]:
    """(endpoint URL, bucket name) from `http(s)://host:port/bucket` or `s3://bucket` + endpoint."""
    parts = urlsplit(bucket)
    if parts.scheme in ("http", "https"):
        name = parts.path.strip("/")
        if not name or "/" in name:
            raise ConfigError(f"bad bucket URL {bucket!r}: expected http(s)://host:port/BUCKET")
        return f"{parts.scheme}://{parts.netloc}", name
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"bad bucket URL {bucket!r}: expected s3://BUCKET")
        return endpoint, parts.netloc
    if not parts.scheme and bucket and "/" not in bucket:
        return endpoint, bucket
    raise ConfigError(f"bad bucket {bucket!r}: expected http(s)://host:port/BUCKET or s3://BUCKET")


class S3Store(ObjectStore):
    kind = "s3"

    def __init__(self, bucket: str, endpoint: str = "", access_key: str = "", secret_key: str = "",
                 region: str = "", max_connections: int = 64, *, metrics: Metrics,
                 retry_timeout: float = RETRY_TIMEOUT) -> None:
        super().__init__(metrics, retry_timeout)
        self.endpoint, self.bucket = parse_bucket(bucket, endpoint)
        access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        config = Config(
            # UNSIGNED-PAYLOAD: no SHA-256 over every 4 MiB body (blocks carry their own checksum,
            # verified on every read), which otherwise costs a tenth of the client's CPU on http://
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=3,
            read_timeout=30,
            max_pool_connections=max_connections,
            signature_version="s3v4",
            # every block carries our own xxhash, verified on read: botocore's CRC on each request
            # would only add CPU time
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # boto3 (bucket checks, listings) is made at its first use: a DataLoader worker forked
        # from a client reads blocks through the signed-HTTP path only, and two boto3 clients
        # cost ~130 ms of CPU per process
        self._config = config
        self._keys = (access_key, secret_key)
        self._region = region or os.environ.get("AWS_REGION") or "us-east-1"
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"bad S3 endpoint {self.endpoint!r}: expected http(s)://host[:port]")
        self._session: Any = None
        self._boto: tuple[Any, Any] | None = None  # (client, quick client)
        self._chain: Any = None  # the default chain's credentials, once found
        self._boto_lock = threading.Lock()
        static = Credentials(access_key, secret_key).get_frozen_credentials() if access_key and secret_key else None
        self.http = SignedHTTP(self.endpoint or f"https://s3.{self._region}.amazonaws.com", self.bucket, self._region,
                               (lambda: static) if static is not None else self._chain_credentials,
                               max_connections)

    def _boto_session(self) -> Any:
        """The keys given (or else the default chain) sign both the boto3 calls and the block
        path. Call with _boto_lock held."""
        if self._session is None:
            access_key, secret_key = self._keys
            self._session = boto3.session.Session(aws_access_key_id=access_key or None,
                                                  aws_secret_access_key=secret_key or None)
        return self._session

    def _clients(self) -> tuple[Any, Any]:
        with self._boto_lock:
            if self._boto is None:
                session = self._boto_session()
                kwargs = dict(endpoint_url=self.endpoint or None, region_name=self._region)
                try:
                    client = session.client("s3", config=self._config, **kwargs)
                except ValueError as e:  # botocore: "Invalid endpoint: ..."
                    raise ConfigError(f"bad S3 endpoint {self.endpoint!r}: {e}") from None
                # checks at format and mount time must answer within seconds, even from a
                # stalled server
                quick = session.client("s3", config=self._config.merge(Config(read_timeout=5)), **kwargs)
                self._boto = (client, quick)
            return self._boto

    @property
    def client(self) -> Any:
        return self._clients()[0]

    @property
    def _quick(self) -> Any:
        return self._clients()[1]

    def _chain_credentials(self) -> Any:
        """Credentials from the default chain (environment, profile, instance role): a
        session is enough to find them, the boto3 clients are not made for it."""
        creds = self._chain
        if creds is None:
            with self._boto_lock:
                if self._chain is None:
                    self._chain = self._boto_session().get_credentials()
                creds = self._chain
        return creds.get_frozen_credentials() if creds is not None else None

    def __str__(self) -> str:
        where = self.endpoint or "s3"
        return f"{where}/{self.bucket}"

    def _fail(self, e: Exception, key: str = "") -> Exception:
        """Our exception for a boto3 or signed-HTTP failure: transient ones are retried, the rest
        are final."""
        if isinstance(e, Transient):
            return e
        if isinstance(e, _NETWORK):
            return Transient(f"{self}: {e}")
        if isinstance(e, bce.NoCredentialsError | NoCredentials):
            return ConfigError("no S3 credentials: pass --access-key/--secret-key or set AWS_ACCESS_KEY_ID")
        if isinstance(e, HTTPFailure):
            return self._answer(e.code, e.status, e.message, key)
        if isinstance(e, bce.ClientError):
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return self._answer(str(err.get("Code", "")), status, err.get("Message", ""), key)
        if isinstance(e, bce.BotoCoreError):
            return Transient(f"{self}: {e}")
        return e

    def _answer(self, code: str, status: int, message: str, key: str) -> Exception:
        """Our exception for an S3 error answer (its code, HTTP status and message)."""
        if code in ("NoSuchKey", "404", "NotFound") and key:
            return ObjectNotFound(f"{self}: no object {key}")
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and not key):
            return ObjectError(f"bucket {self.bucket!r} does not exist at {self.endpoint or 'S3'}")
        if code in _AUTH_CODES:
            return ObjectError(f"S3 refused the credentials for bucket {self.bucket!r} ({code})")
        if code in _TRANSIENT_CODES or status >= 500:
            return Transient(f"{self}: {code or status}")
        return ObjectError(f"{self}: {code or status}: {message}".rstrip(": "))

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.http.put(key, data)
        except Exception as e:
            raise self._fail(e, key) from None

    def _get(self, key: str) -> bytes:
        try:
            return self.http.get(key)
        except Exception as e:
            raise self._fail(e, key) from None

    @property
    def batched_gets(self) -> bool:  # type: ignore[override]
        return self.http.direct

    def _get_many(self, keys: list[str], width: int) -> list[bytes | BaseException]:
        if not self.http.direct:
            return super()._get_many(keys, width)
        got = self.http.get_many(keys, width)
        return [self._fail(r, k) if isinstance(r, Exception) else r for k, r in zip(keys, got, strict=True)]

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            return self.http.get_range(key, start, end)
        except Exception as e:
            raise self._fail(e, key) from None

    def _delete(self, key: str) -> None:
        try:
            self.http.delete(key)
        except Exception as e:
            err = self._fail(e, key)
            if not isinstance(err, ObjectNotFound):
                raise err from None

    def _entries(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every key under prefix; a page that fails transiently is asked again (from the last
        key seen) for up to the retry timeout."""
        last = ""
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"StartAfter": last} if last else {})}
            page = self._retry("list", lambda kw=kw: self._list_page(kw))
            for info in page["items"]:
                yield info
                last = info.key
            if not page["more"]:
                return

    def _list_page(self, kw: dict) -> dict:
        try:
            r = self.client.list_objects_v2(**kw)
        except Exception as e:
            raise self._fail(e) from None
        items = [ObjectInfo(o["Key"], o["Size"], o["LastModified"].timestamp()) for o in r.get("Contents", [])]
        return {"items": items, "more": r.get("IsTruncated", False)}

    def check(self) -> None:
        """Fail fast with a clear error when the bucket is missing or the keys are refused;
        transient failures (a 503, a reset) are tried again for a few seconds, so that a busy
        server does not keep a mount from starting while a dead one still fails within seconds."""
        try:
            self._retry("head", self._head, timeout=CHECK_TIMEOUT)
        except ObjectUnavailable as e:
            raise ObjectError(f"cannot reach S3 at {self.endpoint or 'AWS'}: {e}") from None
        try:  # open the block path's first connection now, not on the first read
            self.http.get("cachefs-connection-check")
        except Exception:
            pass

    def _head(self) -> None:
        try:
            self._quick.head_bucket(Bucket=self.bucket)
        except Exception as e:
            err = self._fail(e)
            if isinstance(err, ObjectError) and "403" in str(e):
                raise ObjectError(f"S3 refused the credentials for bucket {self.bucket!r}") from None
            raise err from None

    def create(self) -> None:
        try:
            self.check()
            return
        except ObjectError as e:
            if "does not exist" not in str(e):
                raise
        try:
            self._retry("create", self._create, timeout=CHECK_TIMEOUT)
        except ObjectUnavailable as e:
            raise ObjectError(f"cannot reach S3 at {self.endpoint or 'AWS'}: {e}") from None

    def _create(self) -> None:
        try:
            self._quick.create_bucket(Bucket=self.bucket)
        except Exception as e:
            raise self._fail(e) from None
