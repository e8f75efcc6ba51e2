"""Every name the CSI driver shares with Kubernetes objects: the manifests in mount/deploy/ must
use exactly these (tests/test_deploy.py checks that they do)."""

from __future__ import annotations

DRIVER_NAME = "csi.cachefs.io"
TOPOLOGY_KEY = "topology.csi.cachefs.io/node"  # a node's warm cache: schedulers can prefer it
SOCKET_NAME = "csi.sock"  # under the plugin dir /var/lib/kubelet/plugins/csi.cachefs.io/

# keys of the Secret a PV or StorageClass points to (never logged, never on a command line)
SECRET_META_URL = "metaurl"
SECRET_ACCESS_KEY = "access-key"
SECRET_SECRET_KEY = "secret-key"
SECRET_KEYS = (SECRET_META_URL, SECRET_ACCESS_KEY, SECRET_SECRET_KEY)

# volume_context keys (PV volumeAttributes; CreateVolume puts them there for dynamic volumes)
CONTEXT_SUBDIR = "subdir"  # directory of the cachefs volume that the pod sees
CONTEXT_MOUNT_OPTIONS = "mountOptions"  # comma-separated, as for mount -t cachefs -o
CONTEXT_CACHE_GROUP = "cacheGroup"  # the cache group the node's mount of the volume joins

# StorageClass parameters the driver understands (besides csi.storage.k8s.io/* for the sidecars)
PARAMETERS = (CONTEXT_MOUNT_OPTIONS, CONTEXT_CACHE_GROUP)
