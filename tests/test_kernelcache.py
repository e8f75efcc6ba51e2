"""DirectoryPlaces: which places the kernel may still hold a directory at (pure unit; the
kernel's invalidation is replaced by a recorder)."""

import threading

import pytest

from cachefs import kernelcache
from cachefs.kernelcache import DirectoryPlaces


@pytest.fixture
def invalidated(monkeypatch):
    calls: list[tuple[int, bytes]] = []
    monkeypatch.setattr(kernelcache.pyfuse3, "invalidate_entry", lambda parent, name: calls.append((parent, name)))
    return calls


def test_a_directory_answered_at_a_new_place_names_its_old_one(invalidated):
    d = DirectoryPlaces()
    d.answered(10, 1, b"x")
    assert d.elsewhere(10, 1, b"x") == []
    assert d.elsewhere(10, 2, b"x") == [(1, b"x")]
    d.drop(10, d.elsewhere(10, 2, b"x"))
    d.answered(10, 2, b"x")
    assert invalidated == [(1, b"x")]
    assert d.elsewhere(10, 3, b"x") == [(2, b"x")]


def test_answers_at_two_places_in_either_order_keep_both_until_each_is_dropped(invalidated):
    d = DirectoryPlaces()
    d.answered(10, 1, b"x")
    d.answered(10, 2, b"x")  # the other node moved it between two lookups
    assert sorted(d.elsewhere(10, 3, b"x")) == [(1, b"x"), (2, b"x")]
    d.drop(10, d.elsewhere(10, 3, b"x"))
    assert d.elsewhere(10, 3, b"x") == []


def test_a_place_answered_again_while_its_invalidation_runs_is_kept(monkeypatch):
    d = DirectoryPlaces()
    release = threading.Event()
    monkeypatch.setattr(kernelcache.pyfuse3, "invalidate_entry", lambda parent, name: release.wait(5))
    d.answered(10, 1, b"x")
    d.drop(10, [(1, b"x")], wait=0.01)  # the parent is locked: the invalidation waits
    assert d.dropping(10, 2, b"x") and not d.dropping(10, 1, b"x")
    d.answered(10, 1, b"x")  # a lookup under the old name, answered meanwhile
    release.set()
    for t in threading.enumerate():
        if t.name == "inval-entry":
            t.join(5)
    assert not d.dropping(10, 2, b"x")
    assert d.elsewhere(10, 2, b"x") == [(1, b"x")]


def test_local_renames_and_removals_move_and_forget_places(invalidated):
    d = DirectoryPlaces()
    d.answered(10, 1, b"a")
    d.answered(11, 1, b"b")
    d.moved(1, b"a", 2, b"a")
    assert d.elsewhere(10, 3, b"a") == [(2, b"a")]
    d.moved(2, b"a", 1, b"b", exchange=True)
    assert d.elsewhere(10, 9, b"z") == [(1, b"b")]
    assert d.elsewhere(11, 9, b"z") == [(2, b"a")]
    d.answered(12, 1, b"b")  # another directory now answered at 10's place
    assert d.elsewhere(10, 9, b"z") == []
    d.removed(1, b"b")
    assert d.elsewhere(12, 9, b"z") == []
    assert invalidated == []
