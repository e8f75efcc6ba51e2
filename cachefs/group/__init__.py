"""The cache group: the nodes of a job share one distributed block cache (see cache.py)."""
