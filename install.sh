#!/usr/bin/env bash
# Install cachefs and everything it needs (Debian packages and Python packages), then format
# and mount an embedded volume (SQLite metadata + a local directory as object store).
# Idempotent: run it again and it installs nothing new and reuses the volume and the mount.
#
#   ./install.sh               install, format if needed, mount at $CACHEFS_MOUNT (/mnt/cachefs)
#   ./install.sh --deps-only   install only (what the test command uses)
set -euo pipefail
cd "$(dirname "$0")"

DEPS_ONLY=0
[ "${1:-}" = "--deps-only" ] && DEPS_ONLY=1
MOUNTPOINT="${CACHEFS_MOUNT:-/mnt/cachefs}"
STATE="${CACHEFS_HOME:-/var/lib/cachefs}"
META="sqlite3://$STATE/default.db"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it installs packages and mounts a file system)" >&2
    exit 1
fi

APT_PKGS="fuse3 libfuse3-dev redis-server redis-sentinel fio pkg-config gcc python3-dev python3-pip"
missing=""
for p in $APT_PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "==> apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
fi
# redis-server is used by the tests on their own ports; the packaged service is not needed
systemctl disable --now redis-server redis-sentinel >/dev/null 2>&1 || true

PY="${PYTHON:-python3}"
PIP_FLAGS="-q --disable-pip-version-check --root-user-action=ignore"
if "$PY" -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    PIP_FLAGS="$PIP_FLAGS --break-system-packages"
fi
echo "==> pip install cachefs"
"$PY" -m pip install $PIP_FLAGS -e ".${CACHEFS_EXTRAS:-}"

# mount -t cachefs looks for /sbin/mount.cachefs
BIN="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
ln -sf "$BIN/mount.cachefs" /sbin/mount.cachefs
[ -e /usr/local/bin/cachefs ] || ln -sf "$BIN/cachefs" /usr/local/bin/cachefs

[ "$DEPS_ONLY" = 1 ] && exit 0

mkdir -p "$STATE" "$MOUNTPOINT"
if ! "$PY" -m cachefs.cli status "$META" >/dev/null 2>&1; then
    "$PY" -m cachefs.cli format "$META" default --storage file --bucket "$STATE/objects"
fi
if grep -qs " $MOUNTPOINT fuse.cachefs " /proc/mounts; then
    echo "cachefs: $MOUNTPOINT is already mounted"
else
    "$PY" -m cachefs.cli mount "$META" "$MOUNTPOINT" --background --log /var/log/cachefs.log
fi
echo "cachefs: volume 'default' ($META) is mounted at $MOUNTPOINT; unmount with: cachefs umount $MOUNTPOINT"
