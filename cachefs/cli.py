"""The `cachefs` command: the parser, the registry of subcommands (one module each under
cachefs/commands/), `main`, and the client of a mount's `.control` file that several commands
use. Every subcommand prints a one-line error and exits non-zero on failure, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import stat
import sys
from types import ModuleType

from . import __version__
from .errors import CachefsError, ConfigError

# each name is a module of cachefs.commands with add(subparsers) and run(args); a new command is
# one new module and one line here (imported on use, so a command's imports cost only its runs)
COMMANDS = ("format", "mount", "umount", "status", "info", "clone", "warmup", "flush", "fsck", "gc", "csi",
            "stats", "bench")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"cachefs.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cachefs", description="cachefs: a distributed cache file system for ML training data")
    parser.add_argument("--version", action="version", version=f"cachefs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        _command(name).add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "meta_url", None) == "-":
            # the URL may hold a password: `-` takes it from the environment, never from argv
            # (which every user can read in /proc/PID/cmdline)
            args.meta_url = os.environ.get("CACHEFS_META_URL") or ""
            if not args.meta_url:
                raise ConfigError("META_URL is '-' but CACHEFS_META_URL is not set")
        return _command(args.command).run(args)
    except CachefsError as e:
        print(f"cachefs {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cachefs {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line (CACHEFS_DEBUG=1 shows the traceback)
        if os.environ.get("CACHEFS_DEBUG"):
            raise
        print(f"cachefs {args.command}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


# ---- the client of a mount's .control file --------------------------------------------------
def control(mountpoint: str, request: dict) -> dict:
    """Ask the mount process through its `.control` file; only the mount's own (its inode on
    that mount), never a file a user put there."""
    from .internal import CONTROL_INODE

    try:
        fd = os.open(os.path.join(mountpoint, ".control"), os.O_RDWR | os.O_NOFOLLOW)
    except OSError as e:
        raise ConfigError(f"{mountpoint}: cannot reach the mount process ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if st.st_ino != CONTROL_INODE or not stat.S_ISREG(st.st_mode) or st.st_dev != os.stat(mountpoint).st_dev:
            raise ConfigError(f"{mountpoint}/.control is not the mount's control file (inode {st.st_ino})")
        os.write(fd, json.dumps(request).encode())
        chunks = []
        while data := os.pread(fd, 1 << 20, sum(map(len, chunks))):
            chunks.append(data)
    except OSError as e:
        raise ConfigError(f"{mountpoint}: the mount process failed the request ({e.strerror})") from None
    finally:
        os.close(fd)
    try:
        answer = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ConfigError(f"{mountpoint}: the mount process gave an answer that is not a JSON object")
    if "error" in answer:
        raise ConfigError(str(answer["error"]))
    return answer


def mount_of(path: str, need_meta: bool = False) -> dict:
    """The state record of the mount that holds path (its mountpoint and metadata URL). Where
    no record is at hand (a pod that sees a CSI bind mount of a subdirectory), the nearest mount
    point above path that serves `.control` stands in, without the URL."""
    from .daemon import read_state

    cur = os.path.realpath(path)
    fallback = None
    while True:
        state = read_state(cur)
        if state:
            return state
        if fallback is None and os.path.ismount(cur) and os.path.exists(os.path.join(cur, ".control")):
            fallback = {"mountpoint": cur}
        if cur == "/":
            break
        cur = os.path.dirname(cur)
    if fallback is None:
        raise ConfigError(f"{path} is not on a mounted cachefs volume")
    if need_meta:
        raise ConfigError(f"{path}: the mount's metadata URL is not known here (run this where the volume "
                          "was mounted)")
    return fallback


if __name__ == "__main__":
    sys.exit(main())
