"""Mount helper and (later) the CSI driver; importable as cachefs.mount."""
