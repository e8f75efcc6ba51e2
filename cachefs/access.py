"""POSIX permission checks for callers the kernel does not check for (the Python client).

A mount leaves mode checks to the kernel (`default_permissions`); a training process reading
through cachefs.Client has no kernel in between, so the client asks here before it acts, with
the process's own uid and groups: the answer a mount would give that process.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from dataclasses import dataclass

from cachefs.meta.types import TYPE_DIR, Attr

from .errors import FSError

R, W, X = os.R_OK, os.W_OK, os.X_OK


@dataclass(frozen=True)
class Caller:
    uid: int
    gids: frozenset[int]

    @classmethod
    def this_process(cls) -> Caller:
        return cls(os.geteuid(), frozenset({os.getegid(), *os.getgroups()}))


def check(attr: Attr, want: int, who: Caller) -> None:
    """FSError(EACCES) unless `who` may `want` (R|W|X bits) on a file with these attributes.
    Root may do anything but execute a file that no one may execute."""
    if who.uid == 0:
        if want & X and attr.type != TYPE_DIR and not attr.mode & 0o111:
            raise FSError(errno.EACCES)
        return
    if who.uid == attr.uid:
        bits = (attr.mode >> 6) & 7
    elif attr.gid in who.gids:
        bits = (attr.mode >> 3) & 7
    else:
        bits = attr.mode & 7
    if want & ~bits & 7:
        raise FSError(errno.EACCES)


def check_sticky(dir_attr: Attr, victim: Attr, who: Caller) -> None:
    """In a sticky directory (/tmp-like) only the file's owner, the directory's owner or root
    may remove or rename an entry."""
    if dir_attr.mode & statmod.S_ISVTX and who.uid not in (0, dir_attr.uid, victim.uid):
        raise FSError(errno.EPERM)
