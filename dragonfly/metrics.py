"""Prometheus metrics, each service with its own registry."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource


# Seconds: whole downloads (small files to large images) and single pieces.
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PIECE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class SupernodeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.origin_bytes = Counter("dragonfly_supernode_origin_bytes", "Bytes read from origins", registry=r)
        self.upload_bytes = Counter("dragonfly_supernode_upload_bytes", "Piece bytes served to peers", registry=r)
        self.origin_fetches = Counter("dragonfly_supernode_origin_fetches", "Origin fetches started", registry=r)
        self.api_requests = Counter("dragonfly_supernode_api_requests", "Peer API requests", ["endpoint"], registry=r)
        self.assignments = Counter("dragonfly_supernode_assignments", "Piece assignments made", ["source"], registry=r)
        self.tasks = Gauge("dragonfly_supernode_tasks", "Tasks known", registry=r)
        self.peers = Gauge("dragonfly_supernode_peers", "Peers in swarms", registry=r)
        self.active_tasks = Gauge("dragonfly_supernode_active_tasks",
                                  "Tasks being fetched from the origin or downloaded by a peer",
                                  registry=r)
        self.active_peers = Gauge("dragonfly_supernode_active_peers",
                                  "Peers in swarms still downloading", registry=r)

    def watch_store(self, store):
        """Export C{store}'s bytes, quota, free space, evictions and errors."""
        self.registry.register(StoreCollector("dragonfly_supernode", store))

    def render(self):
        return generate_latest(self.registry)


class StoreCollector:
    """The piece store's state, read at each scrape: C{<prefix>_store_*}."""

    def __init__(self, prefix, store):
        self.prefix = prefix
        self.store = store

    def describe(self):
        return []   # read at each scrape (the names are fixed; no need to check them)

    def collect(self):
        p, store = self.prefix + "_store", self.store
        free = store.space.free()
        yield GaugeMetricFamily(f"{p}_used_bytes", "Bytes held in the piece store",
                                value=store.usage())
        yield GaugeMetricFamily(f"{p}_quota_bytes", "The store's quota (--cache-size; 0: none)",
                                value=store.quota)
        yield GaugeMetricFamily(f"{p}_free_bytes", "Free bytes on the store's filesystem",
                                value=-1 if free is None else free)
        yield CounterMetricFamily(f"{p}_evictions", "Tasks evicted (TTL, quota or disk space)",
                                  value=store.evictions)
        yield CounterMetricFamily(f"{p}_errors", "Store writes that failed",
                                  value=store.errors)


class PeerMetrics:
    SOURCES = ("peer", "supernode", "origin")

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.download_bytes = Counter(
            "dragonfly_peer_download_bytes", "Bytes downloaded by source", ["source"], registry=r)
        for s in self.SOURCES:
            self.download_bytes.labels(source=s)
        self.upload_bytes = Counter("dragonfly_peer_upload_bytes", "Piece bytes served to other peers", registry=r)
        self.piece_failures = Counter(
            "dragonfly_peer_piece_failures", "Pieces that failed to fetch or verify", ["reason"], registry=r)
        self.downloads = Counter("dragonfly_peer_downloads", "Downloads finished", ["result"], registry=r)
        self.cache_bytes = Gauge("dragonfly_peer_cache_bytes", "Bytes held in the piece store", registry=r)
        self.task_seconds = Histogram(
            "dragonfly_peer_task_duration_seconds", "Time from a download's start to its end",
            ["result"], buckets=TASK_BUCKETS, registry=r)
        self.piece_seconds = Histogram(
            "dragonfly_peer_piece_fetch_duration_seconds",
            "Time to fetch and store one piece from another node", ["source"],
            buckets=PIECE_BUCKETS, registry=r)
        for s in ("peer", "supernode"):
            self.piece_seconds.labels(source=s)
        # dfdaemon mirror counters live here too: the dfdaemon is a peer.
        self.mirror_requests = Counter(
            "dragonfly_mirror_requests", "Registry mirror requests", ["kind", "code"], registry=r)
        self.mirror_blob_bytes = Counter(
            "dragonfly_mirror_blob_bytes", "Blob bytes sent to clients through P2P", registry=r)
        self.mirror_blob_hash_bytes = Counter(
            "dragonfly_mirror_blob_hash_bytes",
            "Blob bytes the mirror hashed itself to check a blob's digest "
            "(none for a blob the supernode attested)", registry=r)
        self.uncached_downloads = Counter(
            "dragonfly_peer_uncached_downloads",
            "Downloads served without keeping them (the cache could not hold them)", registry=r)

    def watch_store(self, store):
        """Export C{store}'s bytes, quota, free space, evictions and errors."""
        self.registry.register(StoreCollector("dragonfly_peer", store))

    def render(self):
        return generate_latest(self.registry)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics):
        Resource.__init__(self)
        self._metrics = metrics

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self._metrics.render()


def sample(metrics, name, labels=None):
    """Current value of one sample (tests and demo); KeyError if the registry has
    no such sample (a renamed metric or label must not read as 0)."""
    value = metrics.registry.get_sample_value(name, labels or {})
    if value is None:
        raise KeyError(f"no sample {name}{labels or ''}")
    return value
