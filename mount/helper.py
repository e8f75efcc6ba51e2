"""`mount.cachefs META_URL MOUNTPOINT [-o OPTIONS]`: what `mount -t cachefs` and /etc/fstab run.

Each -o option maps one to one onto a `cachefs mount` flag; generic mount options that the
kernel or mount(8) own (rw, defaults, _netdev, ...) are accepted and left alone.
"""

from __future__ import annotations

import sys

# mount(8) options with no meaning for us
IGNORED = {"rw", "defaults", "auto", "noauto", "user", "nouser", "_netdev", "nofail", "exec", "noexec",
           "suid", "nosuid", "dev", "nodev", "async", "relatime", "noatime", "atime"}
FLAGS = {"ro": "--read-only", "read-only": "--read-only", "cache-large-write": "--cache-large-write",
         "writeback": "--writeback"}
VALUED = {"attr-cache", "entry-cache", "dir-entry-cache", "heartbeat", "session-timeout", "trash-delay",
          "max-uploads", "max-downloads", "buffer-size", "threads", "log", "cache-dir", "cache-size",
          "free-space-ratio", "metrics", "fsync", "pending-timeout", "upload-defer", "flush-timeout"}
FUSE_PASSTHROUGH = {"allow_other", "allow_root", "default_permissions"}


def translate(options: str) -> list[str]:
    """cachefs mount flags for a comma-separated -o string."""
    args: list[str] = []
    for opt in filter(None, options.split(",")):
        key, sep, value = opt.partition("=")
        if key in IGNORED or key.startswith("x-") or key in FUSE_PASSTHROUGH:
            continue
        if key in FLAGS and not sep:
            args.append(FLAGS[key])
        elif key in VALUED and sep:
            args += [f"--{key}", value]
        else:
            raise ValueError(f"unknown mount option {opt!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o" and i + 1 < len(argv):
            options.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg in ("-n", "-s", "-f", "-v"):  # mount(8) passes these; nothing to do
            pass
        elif arg == "-t" and i + 1 < len(argv):
            i += 1
        elif arg.startswith("-"):
            print(f"mount.cachefs: error: unknown flag {arg}", file=sys.stderr)
            return 1
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        print("mount.cachefs: error: usage: mount.cachefs META_URL MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 1
    try:
        flags = [f for o in options for f in translate(o)]
    except ValueError as e:
        print(f"mount.cachefs: error: {e}", file=sys.stderr)
        return 1
    from cachefs.cli import main as cli_main

    return cli_main(["mount", positional[0], positional[1], "--background", *flags])


if __name__ == "__main__":
    sys.exit(main())
