"""Every figure the client keeps, in one Prometheus registry per mounted volume: served on
`--metrics HOST:PORT`, shown as text in the `.stats` file and read by `cachefs stats`."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

disable_created_metrics()  # the *_created samples only add noise to `.stats`

_LAT = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.cache_hits = Counter("cachefs_cache_hits", "Blocks read from the local disk cache", registry=r)
        self.cache_misses = Counter("cachefs_cache_misses", "Blocks not found in the local disk cache",
                                    registry=r)
        self.cache_hit_bytes = Counter("cachefs_cache_hit_bytes", "Bytes read from the disk cache", registry=r)
        self.cache_write_bytes = Counter("cachefs_cache_write_bytes", "Bytes written to the disk cache",
                                         registry=r)
        self.cache_evictions = Counter("cachefs_cache_evictions", "Blocks evicted from the disk cache",
                                       registry=r)
        self.cache_errors = Counter("cachefs_cache_errors", "Disk cache entries that failed their checksum "
                                    "or could not be read or written", registry=r)
        self.cache_bytes = Gauge("cachefs_cache_bytes", "Bytes held in the disk cache", registry=r)
        self.cache_blocks = Gauge("cachefs_cache_blocks", "Blocks held in the disk cache", registry=r)
        self.cache_dirs = Gauge("cachefs_cache_dirs", "Disk cache directories in use", registry=r)
        self.buffer_hits = Counter("cachefs_buffer_hits", "Blocks served from the memory buffer", registry=r)
        self.buffer_bytes = Gauge("cachefs_buffer_used_bytes", "Bytes held by read and write buffers",
                                  registry=r)
        self.object_requests = Counter("cachefs_object_requests", "Object store requests", ["op"], registry=r)
        self.object_errors = Counter("cachefs_object_errors", "Failed object store requests", ["op"],
                                     registry=r)
        self.object_retries = Counter("cachefs_object_retries", "Object store requests tried again after a "
                                      "transient failure", ["op"], registry=r)
        self.object_bytes = Counter("cachefs_object_bytes", "Object store bytes transferred", ["op"],
                                    registry=r)
        self.object_latency = Histogram("cachefs_object_request_seconds", "Object store request latency",
                                        ["op"], buckets=_LAT, registry=r)
        self.fuse_latency = Histogram("cachefs_fuse_op_seconds", "FUSE operation latency", ["op"],
                                      buckets=_LAT, registry=r)
        self.fuse_in_memory = Counter("cachefs_fuse_in_memory", "FUSE requests answered from memory in the "
                                      "event loop (no thread, no round trip)", ["op"], registry=r)
        self.fuse_loop_redis = Counter("cachefs_fuse_loop_redis", "FUSE requests whose metadata read the event "
                                       "loop sent to Redis itself (no thread), or handed to a thread after "
                                       "that failed", ["op", "result"], registry=r)
        self.fuse_loop_disk = Counter("cachefs_fuse_loop_disk", "FUSE reads of disk-cache pages not in memory "
                                      "that the event loop waited for on an io_uring (no thread), or handed "
                                      "to a thread after that failed", ["result"], registry=r)
        self.fuse_at_once = Gauge("cachefs_fuse_requests_read_at_once", "FUSE requests the event loop read "
                                  "without sleeping on its poller: already queued, or found by busy polling; "
                                  "a count since the mount", ["how"], registry=r)
        self.fuse_bytes = Counter("cachefs_fuse_bytes", "Bytes read and written through FUSE", ["op"],
                                  registry=r)
        # (the exported name predates the split of "pending" into its meanings; dashboards use it)
        self.uploads_queued = Gauge("cachefs_pending_uploads", "Blocks queued or being uploaded", registry=r)
        self.staging_blocks = Gauge("cachefs_staging_blocks", "Write-back blocks staged and not yet uploaded",
                                    registry=r)
        self.staging_bytes = Gauge("cachefs_staging_bytes", "Bytes of staged write-back blocks on disk",
                                   registry=r)
        self.staging_fallbacks = Counter("cachefs_staging_fallbacks", "Blocks written through because "
                                         "staging had no room", registry=r)
        self.upload_failures = Counter("cachefs_writeback_upload_failures", "Write-back uploads that failed "
                                       "(each is retried)", ["kind"], registry=r)
        self.checksum_errors = Counter("cachefs_checksum_errors", "Blocks that failed their checksum",
                                       ["source"], registry=r)
        self.meta_retries = Counter("cachefs_meta_retries", "Metadata requests tried again during an outage "
                                    "of the engine", registry=r)
        self.meta_transactions = Counter("cachefs_meta_transactions", "Metadata transactions by how they "
                                         "committed: one round trip on known values, or watched reads",
                                         ["path"], registry=r)
        self.listings = Counter("cachefs_meta_listings", "Directories fetched whole for the lookups of a "
                                "name-by-name scan of them", registry=r)
        self.meta_outage_seconds = Counter("cachefs_meta_outage_seconds", "Seconds the metadata engine did not "
                                           "answer (outages ridden through)", registry=r)
        self.range_reads = Counter("cachefs_ranged_reads", "Small random reads of cold blocks answered by "
                                   "ranged GETs of the segments they need", registry=r)
        self.group_members = Gauge("cachefs_group_members", "Members of the cache group in the ring", registry=r)
        self.peer_blocks = Counter("cachefs_peer_blocks", "Blocks fetched from (in) and served to (out) peers",
                                   ["peer", "direction"], registry=r)
        self.peer_bytes = Counter("cachefs_peer_bytes", "Block bytes fetched from (in) and served to (out) "
                                  "peers", ["peer", "direction"], registry=r)
        self.peer_errors = Counter("cachefs_peer_errors", "Peers that could not give a block (then the object "
                                   "store did)", ["peer", "kind"], registry=r)
        self.peer_fallbacks = Counter("cachefs_peer_fallbacks", "Blocks read from the object store because "
                                      "their owner could not give them", registry=r)
        self.peer_refused = Counter("cachefs_peer_refused", "Requests to this member's block service refused "
                                    "(unsigned, wrong secret, expired, replayed)", registry=r)
        self.prefetches = Counter("cachefs_prefetch_blocks", "Blocks fetched ahead of sequential readers",
                                  registry=r)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when never set), for tests and `cachefs stats`."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)


def parse_text(text: str) -> dict[str, float]:
    """Samples of the exposition text, keyed `name{labels}` (what `.stats` holds)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out
