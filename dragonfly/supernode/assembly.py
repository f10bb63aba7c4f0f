"""The supernode's object graph, built from a L{SupernodeConfig}: thread pool,
store, admission key, scheduler, origin client and CDN, cluster, API, piece server, and the
L{SupernodeService} that runs them. The tap only parses options and calls
L{build_supernode}.
"""
import os

from twisted.web.client import HTTPConnectionPool

from dragonfly.admission import KEY_FILE, AdmissionKeys, AdmissionSigner
from dragonfly.egress import EgressPolicy
from dragonfly.logsetup import json_observer_for
from dragonfly.metrics import SupernodeMetrics
from dragonfly.egressguard import EgressGuard
from dragonfly.origin import OriginClient, make_http_client
from dragonfly.runtime.tuning import tune_allocator
from dragonfly.protocol.server import PieceServerFactory
from dragonfly.runtime.daemon import server_endpoint
from dragonfly.runtime.ratelimit import TokenBucket
from dragonfly.runtime.threads import ThreadRunner
from dragonfly.storage.store import PieceStore
from dragonfly.supernode.api import SupernodeAPI, api_site
from dragonfly.supernode.cdn import CDN
from dragonfly.supernode.cluster import Cluster
from dragonfly.supernode.handover import HandOver
from dragonfly.supernode.liveness import LivenessCheck
from dragonfly.supernode.preheat import Preheater
from dragonfly.supernode.wakeups import LongPollScheduler
from dragonfly.supernode.service import SupernodeService
from dragonfly.tls import ReloadOnHangup, node_tls

__all__ = ["build_supernode"]


def build_supernode(reactor, c):
    """The L{SupernodeService} for config C{c}, on C{reactor}."""
    tune_allocator()   # origin bodies arrive as piece-sized runs of chunks too
    runner = ThreadRunner(reactor, max_threads=c.threads, name="supernode-io")
    metrics = SupernodeMetrics()
    os.makedirs(c.data_dir, exist_ok=True)
    signer = AdmissionSigner.from_file(reactor, os.path.join(c.data_dir, KEY_FILE))
    admission = AdmissionKeys(reactor)   # ours and, as the cluster checks learn them, its members'
    admission.add_all(signer.keys())
    store = PieceStore(os.path.join(c.data_dir, "pieces"), quota=c.cache_size, ttl=c.cache_ttl,
                       clock=reactor, runner=runner)
    metrics.watch_store(store)
    scheduler = LongPollScheduler(reactor, seed_max_uploads=c.max_uploads,
                                  max_peers_per_address=c.max_peers_per_address,
                                  max_uploads_per_peer=c.swarm_uploads,
                                  seed_swarm_uploads=c.swarm_uploads)
    scheduler.liveness = LivenessCheck(scheduler, reactor)   # sources reported failing

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    pool.retryAutomatically = False
    rates = [r for r in (c.origin_limit, c.download_limit) if r > 0]
    origin_limiter = TokenBucket(reactor, min(rates)) if rates else None
    egress = EgressPolicy(c.allow_origin, c.deny_origin)
    origin = OriginClient(reactor, make_http_client(reactor, pool, egress=egress), origin_limiter)
    cdn = CDN(reactor, store, origin, scheduler, c.piece_size, metrics, runner,
              spool_dir=os.path.join(c.data_dir, "spool"), max_spool=c.cache_size,
              max_file_size=c.max_file_size)
    closers = [pool.closeCachedConnections]

    tls = node_tls(c.tls, reactor)
    cluster = None
    if c.cluster:
        cpool = HTTPConnectionPool(reactor, persistent=False)
        cluster = Cluster(reactor, make_http_client(reactor, cpool, context_factory=tls),
                          c.cluster, interval=c.cluster_interval, admission=admission,
                          scheme="http" if tls is None else "https")
        closers.append(cpool.closeCachedConnections)
    preheater = Preheater(reactor, cdn, egress=EgressGuard(reactor, egress))
    handover = HandOver(reactor, scheduler, cdn, cluster, timeout=c.drain_timeout)
    api = SupernodeAPI(reactor, cdn, scheduler, metrics, cluster=cluster, preheater=preheater,
                       trust_advertised=c.trust_advertised, signer=signer, admission=admission,
                       handover=handover)
    preheater.private_access = api.private_access   # preheated tasks count as private
    site = api_site(api)

    upload_limiter = TokenBucket(reactor, c.upload_limit) if c.upload_limit > 0 else None
    piece_factory = PieceServerFactory(store, reactor, upload_limiter=upload_limiter,
                                       max_uploads=c.max_uploads,
                                       on_upload=metrics.upload_bytes.inc, admission=admission,
                                       on_lost=scheduler.liveness.lost)
    observer = json_observer_for(reactor, c)
    api_endpoint = server_endpoint(reactor, c.listen)
    piece_endpoint = server_endpoint(reactor, c.piece_listen)
    if tls is not None:
        api_endpoint, piece_endpoint = tls.wrap_server(api_endpoint), tls.wrap_server(piece_endpoint)
    svc = SupernodeService(
        reactor, c, store, scheduler, cdn, site, piece_factory, api_endpoint, piece_endpoint,
        metrics, preheater=preheater, cluster=cluster, runner=runner, closers=closers,
        log_observer=observer, handover=handover)
    if tls is not None:
        ReloadOnHangup(reactor, tls).setServiceParent(svc)
    return svc
