"""The block data path to S3: PUT, GET and DELETE of one object as SigV4-signed HTTP requests,
without the boto3 client around them.

Why: blocks are the hot path, and the boto3 client's machinery (endpoint rules, events,
parameter validation, response parsing) cost ~1 ms of CPU per request and more in latency:
against one moto server on loopback, a 16 KiB PUT took 5.9 ms through the client and 2.0 ms
signed and sent by hand, a 4 MiB PUT 6.3 against 3.5 ms of our CPU. Small files pay that on
every close. The signature is sigv4.py's; listing, bucket checks and creation keep the client
(S3Store).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from urllib.parse import quote, urlsplit
from urllib.request import getproxies, proxy_bypass

import urllib3
from botocore.credentials import Credentials

from cachefs.errors import ObjectError

from .base import Transient
from .http1 import HTTP1Pool, Response
from .sigv4 import Signer, host_of

# the body is not hashed into the signature (UNSIGNED-PAYLOAD, sigv4.py): every block carries
# its own xxhash, checked on every read, and hashing 4 MiB with SHA-256 costs ~10 ms of CPU
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


class SignedHTTP:
    """One bucket's objects over a pool of keep-alive connections (thread-safe)."""

    def __init__(self, endpoint_url: str, bucket: str, region: str,
                 credentials: Callable[[], Credentials | None], max_connections: int,
                 connect_timeout: float = 3, read_timeout: float = 15) -> None:
        self.base = f"{endpoint_url.rstrip('/')}/{quote(bucket, safe='')}/"
        self.region = region
        self._credentials = credentials
        self._signer = Signer(region)
        self._host = host_of(endpoint_url)
        parts = urlsplit(self.base)
        self._origin, self._prefix = f"{parts.scheme}://{parts.netloc}", parts.path
        ca_file = os.environ.get("AWS_CA_BUNDLE") or None
        proxy = proxy_for(endpoint_url)
        self.pool: urllib3.ProxyManager | None = None
        self._direct: HTTP1Pool | None = None
        if proxy:
            self.pool = urllib3.ProxyManager(proxy, num_pools=4, maxsize=max_connections, retries=False,
                                             timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                                             **({"ca_certs": ca_file} if ca_file else {}))
        else:  # straight to the endpoint over our own connections
            self._direct = HTTP1Pool(parts.scheme, parts.hostname or "", parts.port, self._host,
                                     max_idle=max_connections, connect_timeout=connect_timeout,
                                     read_timeout=read_timeout, ca_file=ca_file)

    def _signed(self, method: str, key: str) -> tuple[str, dict[str, str]]:
        path = self._prefix + quote(key, safe="/~")
        creds = self._credentials()
        if creds is None:
            raise NoCredentials()
        return path, self._signer.headers(method, self._host, path, creds)

    def _request(self, method: str, key: str, body: bytes | None = None,
                 extra: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse | Response:
        path, headers = self._signed(method, key)
        if extra:
            headers.update(extra)  # not signed: S3 signs only what the signature names
        try:
            if self._direct is not None:
                return self._direct.request(method, path, headers, body)
            return self.pool.request(method, self._origin + path, body=body, headers=headers)
        except (urllib3.exceptions.HTTPError, OSError) as e:  # refused, reset, timed out, cut short
            raise Transient(f"{method} {key}: {e}") from None

    def put(self, key: str, data: bytes) -> None:
        r = self._request("PUT", key, data)
        if r.status != 200:
            raise HTTPFailure(r.status, r.data)

    def get(self, key: str) -> bytes:
        return _body(key, self._request("GET", key))

    @property
    def direct(self) -> bool:
        """Straight to the endpoint over our own connections (not through a proxy)."""
        return self._direct is not None

    def get_many(self, keys: list[str], width: int) -> list[bytes | BaseException]:
        """Whole objects fetched by this thread, `width` at a time (HTTP1Pool.request_many): the
        bytes or the failure of each. Only straight to the endpoint (`direct`)."""
        if self._direct is None:
            raise ValueError("batched GETs go straight to the endpoint, not through a proxy")
        answers = self._direct.request_many("GET", [self._signed("GET", k) for k in keys], width)
        out: list[bytes | BaseException] = []
        for key, r in zip(keys, answers, strict=True):
            if isinstance(r, BaseException):
                out.append(Transient(f"GET {key}: {r}") if isinstance(r, OSError) else r)
                continue
            try:
                out.append(_body(key, r))
            except Exception as e:
                out.append(e)
        return out

    def get_range(self, key: str, start: int, end: int) -> bytes:
        r = self._request("GET", key, extra={"Range": f"bytes={start}-{end - 1}"})
        if r.status == 200:  # a server that ignores ranges: the whole object
            return r.data[start:end]
        if r.status != 206:
            raise HTTPFailure(r.status, r.data)
        return _whole(f"{key} (range)", r)

    def delete(self, key: str) -> None:
        r = self._request("DELETE", key)
        if r.status not in (200, 204):
            raise HTTPFailure(r.status, r.data)


def _body(key: str, r: urllib3.BaseHTTPResponse | Response) -> bytes:
    """A whole-object GET's body, or its failure."""
    if r.status != 200:
        raise HTTPFailure(r.status, r.data)
    return _whole(key, r)


def _whole(what: str, r: urllib3.BaseHTTPResponse | Response) -> bytes:
    """The answer's body, when all of it came (a cut one is worth another try)."""
    length = r.headers.get("content-length")
    if length is not None and int(length) != len(r.data):
        raise Transient(f"GET {what}: {len(r.data)} of {length} bytes")
    return r.data


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for url (HTTP(S)_PROXY, NO_PROXY), as boto3 finds it."""
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if not proxy or proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class NoCredentials(ObjectError):
    pass


class HTTPFailure(Exception):
    """An S3 error answer: its status and the code and message of its XML body."""

    def __init__(self, status: int, body: bytes) -> None:
        code = _CODE.search(body or b"")
        message = _MESSAGE.search(body or b"")
        self.status = status
        self.code = code.group(1).decode(errors="replace") if code else str(status)
        self.message = message.group(1).decode(errors="replace") if message else ""
        super().__init__(f"{self.code} ({status})")
