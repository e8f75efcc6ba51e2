"""The mount helper (mount.cachefs) and the Kubernetes CSI driver; importable as cachefs.mount."""
