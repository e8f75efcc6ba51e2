"""`mount.cachefs META_URL MOUNTPOINT [-o OPTIONS]`: what `mount -t cachefs` and /etc/fstab run.

Each -o option is a `cachefs mount` flag of the same name (cachefs/options.py declares them);
generic mount options that the kernel or mount(8) own (rw, defaults, _netdev, ...) are accepted
and left alone.
"""

from __future__ import annotations

import sys

from cachefs.options import translate as translate_options

# mount(8)'s own options, and FUSE options every cachefs mount has: nothing to pass on
IGNORED = frozenset({"rw", "defaults", "auto", "noauto", "user", "nouser", "_netdev", "nofail", "exec",
                     "noexec", "suid", "nosuid", "dev", "nodev", "async", "relatime", "noatime", "atime",
                     "allow_other", "allow_root", "default_permissions"})


def translate(opts: str) -> list[str]:
    """cachefs mount flags for a comma-separated -o string (ValueError for an unknown option)."""
    return translate_options(opts, IGNORED)


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
