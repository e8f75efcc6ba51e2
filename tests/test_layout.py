"""The checkout tests itself, and the one declaration of mount options maps to every surface."""

from __future__ import annotations

import dataclasses
import os

import pytest

import cachefs
import cachefs.meta
import cachefs.mount
from cachefs import options
from cachefs.cli import build_parser
from cachefs.mount.helper import translate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module,folder", [(cachefs, "cachefs"), (cachefs.meta, "meta"), (cachefs.mount, "mount")])
def test_packages_import_from_this_checkout(module, folder):
    # an editable install of another checkout on this machine once served its own meta/ here
    assert os.path.dirname(os.path.abspath(module.__file__)) == os.path.join(ROOT, folder)


def _mount_args(*flags: str):
    return build_parser().parse_args(["mount", "sqlite3:///tmp/x.db", "/mnt/x", *flags])


SPECIAL = {"session_timeout": "99", "metrics": "127.0.0.1:9999", "cache_group": "job",
           "group_listen": "127.0.0.2:9601"}  # values only these fields accept
NEEDS = {"group_listen": ("--cache-group", "job"), "no_sharing": ("--cache-group", "job")}  # and their company


def _sample(f: dataclasses.Field) -> str:
    """A valid value for an option's -o form that differs from its default."""
    if f.metadata["choices"]:
        return next(c for c in f.metadata["choices"] if c != f.default)
    return SPECIAL.get(f.name) or {"int": "7", "float": "0.5", "str": "/some/where"}[f.type]


def test_every_mount_option_maps_to_a_flag_and_back():
    parser = build_parser()
    mount = parser._subparsers._group_actions[0].choices["mount"]
    flags = {s for a in mount._actions for s in a.option_strings if s.startswith("--")}
    flags -= {"--help", "--background"}
    by_name = options.mount_options()
    # every flag of `cachefs mount` is an -o option of the same name, and every -o option is a flag
    assert {f"--{n}" for n, f in by_name.items() if n == options.flag_name(f.name)} == flags
    for name, f in by_name.items():
        if f.type == "bool":
            got = options.from_args(_mount_args(*translate(name), *NEEDS.get(f.name, ())))
            assert getattr(got, f.name) is True
        else:
            value = _sample(f)
            got = options.from_args(_mount_args(*translate(f"{name}={value}"), *NEEDS.get(f.name, ())))
            want = type(f.default)(value) * (options.MiB if f.metadata["unit"] == "MiB" else 1)
            assert getattr(got, f.name) == want, name
    assert options.from_args(_mount_args()) == options.Options()  # the flags' defaults are the declared ones


@pytest.mark.parametrize("bad", ["bogus=1", "writeback=yes", "cache-size", "fsync=sometimes"])
def test_bad_mount_options_are_refused(bad):
    with pytest.raises((ValueError, SystemExit)):
        options.from_args(_mount_args(*translate(bad)))
