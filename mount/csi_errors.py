"""CSI status codes for everything the driver raises, in one place, with secrets scrubbed from
every message that leaves the driver (as a status or in its log)."""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc

from cachefs.errors import CachefsError

from .csi_state import Busy

log = logging.getLogger("cachefs.csi")
C = TypeVar("C", bound=type)


class CSIError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def require(value: object, field: str) -> None:
    if not value:
        raise CSIError(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is required")


def scrub(text: str, secrets: Mapping[str, str]) -> str:
    """The text with every secret value (and any password in a URL inside one) replaced."""
    from cachefs.meta import redact_url

    for value in secrets.values():
        if value and len(value) >= 4:
            text = text.replace(value, "****")
            redacted = redact_url(value)
            if redacted != value:
                _, _, cred = value.partition("://")
                password = cred.split("@", 1)[0].partition(":")[2]
                if len(password) >= 4:
                    text = text.replace(password, "****")
    return text


def handled(cls: C) -> C:
    """Wrap every RPC method of a servicer class so that failures become CSI status codes."""
    for name in [n for n in vars(cls) if n[:1].isupper()]:
        setattr(cls, name, _wrap(getattr(cls, name), name))
    return cls


def _wrap(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(self, request, context):
        secrets = dict(getattr(request, "secrets", {}) or {})
        try:
            return fn(self, request, context)
        except CSIError as e:
            code, message = e.code, str(e)
        except Busy:
            code, message = grpc.StatusCode.ABORTED, "an operation on this target is already in progress"
        except CachefsError as e:
            code, message = grpc.StatusCode.INTERNAL, str(e)
        except Exception as e:  # a bug: say what, keep serving (the traceback scrubbed too)
            log.error("%s failed: %s", name, scrub(traceback.format_exc(), secrets))
            code, message = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
        message = scrub(message, secrets)
        log.warning("%s: %s: %s", name, code.name, message)
        context.abort(code, message)

    return call
