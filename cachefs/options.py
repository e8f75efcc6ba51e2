"""Every mount option, declared once.

A field of `Options` is one option: its name (the flag `--name-with-dashes` of `cachefs mount`,
the `-o name-with-dashes=value` of `mount.cachefs`, fstab and the CSI driver), its type, its
unit, its default and its help. The CLI flags, the `-o` translation and the values the volume
is opened with are all derived from these fields, so an option added here is everywhere at once
and a default lives in one place.

Values are held in base units (bytes, seconds); a field whose unit is MiB is given in MiB on the
command line and in `-o`, the way JuiceFS takes its sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MiB = 1 << 20
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes of a size such as 4M, 512K or 1048576."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"bad size {text!r} (examples: 4M, 512K, 1048576)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def option(default: Any, help: str, *, unit: str = "", minimum: float | None = None,
           choices: tuple[str, ...] = (), aliases: tuple[str, ...] = (), metavar: str = "") -> Any:
    """One option's declaration (a dataclass field carrying its metadata).

    unit "MiB": given in MiB, held in bytes; "s": seconds. aliases: further `-o` names."""
    return field(default=default, metadata={"help": help, "unit": unit, "minimum": minimum,
                                            "choices": choices, "aliases": aliases, "metavar": metavar})


@dataclass
class Options:
    """How a volume is opened and mounted (every field is a mount option)."""

    read_only: bool = option(False, "mount read-only", aliases=("ro",))
    cache_dir: str = option("/var/cache/cachefs", "local block cache directories, separated by ':' ('' for "
                            "none)", metavar="DIR[:DIR...]")
    cache_size: int = option(100 << 30, "disk cache size limit, 0 disables it", unit="MiB", minimum=0)
    free_space_ratio: float = option(0.1, "keep at least this share of each cache disk free", minimum=0)
    cache_large_write: bool = option(False, "also cache full blocks just written (default: only partial "
                                     "blocks)")
    buffer_size: int = option(300 << 20, "memory for blocks (half for reads and readahead, half for "
                              "uploads)", unit="MiB", minimum=1)
    max_uploads: int = option(16, "parallel block uploads", minimum=1)
    max_downloads: int = option(16, "parallel block downloads", minimum=1)
    threads: int = option(32, "worker threads serving FUSE requests", minimum=1)
    busy_poll: int = option(50, "microseconds the FUSE loop keeps polling for the next request before "
                            "it sleeps, while requests follow each other that closely (a sleeping "
                            "loop's wake-up costs more than a request; 0: never)", minimum=0,
                            metavar="MICROSECONDS")
    attr_cache: float = option(1.0, "kernel attribute cache", unit="s", minimum=0)
    entry_cache: float = option(1.0, "kernel file entry cache", unit="s", minimum=0)
    dir_entry_cache: float = option(1.0, "kernel directory entry cache", unit="s", minimum=0)
    open_cache: float = option(0.0, "opens within this long of the file's last close here reuse the "
                               "attributes and slices known then instead of asking the engine (relaxes "
                               "close-to-open: for read-only datasets; 0: off)", unit="s", minimum=0)
    heartbeat: float = option(12.0, "session heartbeat interval", unit="s")
    session_timeout: float = option(60.0, "a session silent this long counts as dead and is cleaned up by "
                                    "any other client", unit="s")
    trash_delay: float = option(30.0, "delay before removed data is deleted from the object store", unit="s",
                                minimum=0)
    writeback: bool = option(False, "close/fsync return once blocks are durable in the local staging "
                             "directory (under the first cache dir); uploads run in the background")
    fsync: str = option("local", "with --writeback: remote makes fsync wait for the upload",
                        choices=("local", "remote"))
    upload_defer: float = option(30.0, "with --writeback: while a writer keeps staging blocks, uploads wait "
                                 "for it to pause, at most this long, so close returns at disk speed (0: "
                                 "upload at once)", unit="s", minimum=0)
    flush_timeout: float = option(60.0, "with --writeback: after a plain umount, keep uploading this long "
                                  "before exiting (`cachefs umount` flushes first and takes its own limit)",
                                  unit="s", minimum=0)
    pending_timeout: float = option(60.0, "how long a read waits for blocks another node has not uploaded "
                                    "yet", unit="s")
    meta_retry_timeout: float = option(60.0, "a metadata operation rides through an outage of the engine "
                                       "(restart, failover) this long before it fails with EIO", unit="s",
                                       minimum=0)
    io_retry_timeout: float = option(300.0, "an object-store request rides through an outage (errors, "
                                     "throttling, stalls) this long before it fails with EIO", unit="s",
                                     minimum=0)
    cache_group: str = option("", "share the disk cache with the other mounts of this volume that name the "
                              "same group: each block is kept by one member and served to the others "
                              "('' for none)", metavar="NAME")
    group_listen: str = option("", "with --cache-group: the address of this member's block service, as the "
                               "others reach it (default: this host's address, port 9601)", metavar="HOST:PORT")
    group_weight: float = option(1.0, "with --cache-group: this member's share of the blocks, relative to "
                                 "the others (e.g. its cache size)", minimum=0.01)
    no_sharing: bool = option(False, "with --cache-group: read through the group without serving it or "
                              "owning blocks (ephemeral pods)")
    metrics: str = option("", "serve Prometheus metrics on this address", metavar="HOST:PORT")
    log: str = option("", "log file (background default /var/log/cachefs.log)", metavar="FILE")

    @property
    def cache_dirs(self) -> list[str]:
        return [d for d in self.cache_dir.split(":") if d]

    @property
    def fsync_remote(self) -> bool:
        return self.fsync == "remote"

    def validate(self) -> Options:
        """Raise ConfigError for values no mount can work with; returns self."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise ConfigError(f"--{flag_name(f.name)} must be at least {_shown(f, meta['minimum'])}")
            if meta["choices"] and value not in meta["choices"]:
                raise ConfigError(f"--{flag_name(f.name)} must be one of {', '.join(meta['choices'])}")
        if self.heartbeat <= 0 or self.session_timeout <= self.heartbeat:
            raise ConfigError("--session-timeout must be longer than --heartbeat (both positive)")
        if self.free_space_ratio >= 1:
            raise ConfigError("--free-space-ratio must be in [0, 1)")
        if self.pending_timeout <= 0:
            raise ConfigError("--pending-timeout must be positive")
        if self.metrics and not re.fullmatch(r"[\w.\-]*:\d+", self.metrics):
            raise ConfigError(f"bad --metrics address {self.metrics!r} (expected HOST:PORT)")
        if self.cache_group and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", self.cache_group):
            raise ConfigError(f"bad --cache-group {self.cache_group!r}: letters, digits, '.', '_' and '-'")
        if self.group_listen and not re.fullmatch(r"[\w.\-]*:\d+", self.group_listen):
            raise ConfigError(f"bad --group-listen address {self.group_listen!r} (expected HOST:PORT)")
        if (self.group_listen or self.no_sharing) and not self.cache_group:
            raise ConfigError("--group-listen and --no-sharing go with --cache-group")
        return self


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Options)


def flag_name(name: str) -> str:
    return name.replace("_", "-")


def _shown(f: dataclasses.Field, value: Any) -> Any:
    """A value in the unit the user gives it in."""
    return value // MiB if f.metadata["unit"] == "MiB" else value


def _help(f: dataclasses.Field) -> str:
    unit = f.metadata["unit"]
    if f.type == "bool" or f.type is bool:
        return f.metadata["help"]
    default = _shown(f, f.default)
    where = f" ({unit})" if unit == "MiB" else " (seconds)" if unit == "s" else ""
    return f"{f.metadata['help']}{where} (default {default if default != '' else 'none'})"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every option, on the `cachefs mount` parser."""
    for f in FIELDS:
        names = [f"--{flag_name(f.name)}"]
        if f.type == "bool":
            parser.add_argument(*names, dest=f.name, action="store_true", help=_help(f))
            continue
        kind = {"int": int, "float": float, "str": str}[f.type]
        kw: dict[str, Any] = dict(dest=f.name, type=kind, default=_shown(f, f.default), help=_help(f))
        if f.metadata["choices"]:
            kw["choices"] = f.metadata["choices"]
        if f.metadata["metavar"]:
            kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(*names, **kw)


def from_args(args: argparse.Namespace) -> Options:
    """The Options the parsed flags give (sizes converted to bytes), validated."""
    values = {}
    for f in FIELDS:
        value = getattr(args, f.name)
        values[f.name] = value * MiB if f.metadata["unit"] == "MiB" else value
    return Options(**values).validate()


def mount_options() -> dict[str, dataclasses.Field]:
    """Every `-o` name (fstab, mount.cachefs, CSI mountOptions) and the option it sets."""
    out = {}
    for f in FIELDS:
        for name in (flag_name(f.name), *f.metadata["aliases"]):
            out[name] = f
    return out


def translate(options: str, ignored: frozenset[str] = frozenset()) -> list[str]:
    """`cachefs mount` flags for a comma-separated `-o` string; ValueError for an unknown or
    malformed option. Names in `ignored` (and x-*) are mount(8)'s own and skipped."""
    known = mount_options()
    args: list[str] = []
    for opt in filter(None, options.split(",")):
        key, sep, value = opt.partition("=")
        if key in ignored or key.startswith("x-"):
            continue
        f = known.get(key)
        if f is None:
            raise ValueError(f"unknown mount option {opt!r}")
        flag = f"--{flag_name(f.name)}"
        if f.type == "bool":
            if sep:
                raise ValueError(f"mount option {key!r} takes no value")
            args.append(flag)
        elif sep:
            args += [flag, value]
        else:
            raise ValueError(f"mount option {key!r} needs a value ({key}=...)")
    return args


__all__ = ["Options", "option", "add_flags", "from_args", "translate", "mount_options", "parse_size", "MiB"]
