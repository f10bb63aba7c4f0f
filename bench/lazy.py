"""Bench: lazy pulling through the mirror, first byte of a range (issue 18).

A real registry (``docker-registry``) holds a single-layer image whose layer
is 1 GiB (``--quick``: 64 MiB; ``DFBENCH_LAZY_BYTES`` overrides both). A
lazy-pulling snapshotter reads small ranges of such a layer; what matters is
the time to the first byte of each. For every offset (0, 10%, 50%, 90% and
the layer's last 64 KiB) the bench times, with a raw-socket client, the first
body byte of ``GET`` with ``Range: bytes=OFFSET-(OFFSET+64 KiB-1)`` on a
dfdaemon's mirror port:

- *cold*: a fresh supernode and a fresh dfdaemon per offset: nobody holds
  the blob; the supernode asks the registry for the covering pieces first;
- *warm*: one supernode and a first dfdaemon that pulled the whole layer (the
  blob in the swarm), then a fresh dfdaemon per offset.

Every range's bytes are checked against the layer file; the registry's log
gives the bytes it sent for the blob per cycle (at most the layer once: the
rest of the blob still comes in the background). Targets: <= 0.2 s warm,
<= 1 s cold, whatever the offset.
"""
import os

from bench.cluster import Supernode
from bench.mirror import DfDaemon, Registry, first_byte_get, make_layer
from bench.procs import BenchError

MiB = 1 << 20
RANGE = 64 * 1024
WARM_TARGET_S = 0.2
COLD_TARGET_S = 1.0
FRACTIONS = (0.0, 0.1, 0.5, 0.9, None)     # None: the last RANGE bytes
REPO = "bench/lazy"


def layer_bytes(quick):
    """The layer's size: DFBENCH_LAZY_BYTES, else 1 GiB (quick: 64 MiB)."""
    env = os.environ.get("DFBENCH_LAZY_BYTES")
    if env:
        size = int(env)
        return max(8192, size - size % 512)
    return 64 * MiB if quick else 1 << 30


def offsets(size):
    out = []
    for frac in FRACTIONS:
        first = size - RANGE if frac is None else int(size * frac)
        first = max(0, min(first, size - RANGE))
        out.append(("end" if frac is None else "%d%%" % round(frac * 100), first))
    return out


def _expected(path, first, last):
    with open(path, "rb") as f:
        f.seek(first)
        return f.read(last - first + 1)


def _one(ctx, name, node, url, path, label, first):
    last = first + RANGE - 1
    r = first_byte_get(node.base_url + url, None, byte_range=(first, last))
    if r.pop("body") != _expected(path, first, last):
        raise BenchError("%s range at %s: wrong bytes" % (name, label))
    r["offset"] = first
    ctx.log("lazy %s %-4s first byte %.3f s" % (name, label, r["first_body_s"] or -1))
    return r


def _sent(registry, digest, since):
    return sum(w for _, w, _ in registry.blob_gets(digest, since))


def run(ctx):
    size = layer_bytes(ctx.quick)
    result = {"layer_bytes": size, "range_bytes": RANGE,
              "targets": {"warm_s": WARM_TARGET_S, "cold_s": COLD_TARGET_S},
              "cold": {}, "warm": {}, "registry_bytes": {}}
    ctx.log("lazy: layer %d MiB, %d KiB ranges" % (size // MiB, RANGE // 1024))
    path, digest = make_layer(os.path.join(ctx.files, "lazy-layer-%d.tar" % size), size)
    work = ctx.tempdir("lazy")
    registry = Registry(os.path.join(work, "registry"))
    ctx.on_close(registry.close)
    registry.start()
    registry.push_image(REPO, path, digest)
    url = "/v2/%s/blobs/%s" % (REPO, digest)

    for label, first in offsets(size):          # cold: nobody holds the blob
        since = registry.log_offset()
        sn = Supernode(work, name="supernode-cold-%s" % label.rstrip("%"),
                       extra=ctx.supernode_args).start()
        node = DfDaemon(work, sn.address, registry, extra=ctx.peer_args,
                        name="dfdaemon-cold-%s" % label.rstrip("%")).start().wait_ready()
        try:
            result["cold"][label] = _one(ctx, "cold", node, url, path, label, first)
        finally:
            node.stop()
            sn.stop()
        result["registry_bytes"]["cold-" + label] = _sent(registry, digest, since)

    since = registry.log_offset()               # warm: the blob in the swarm
    sn = Supernode(work, name="supernode-warm", extra=ctx.supernode_args).start()
    seeder = DfDaemon(work, sn.address, registry, extra=ctx.peer_args,
                      name="dfdaemon-seeder").start().wait_ready()
    try:
        out = os.path.join(work, "seeded.tar")
        r = first_byte_get(seeder.base_url + url, out, timeout=60 + size / 20e6)
        os.unlink(out)
        if r["sha256"] != digest:
            raise BenchError("warm seeding: wrong blob")
        for label, first in offsets(size):
            node = DfDaemon(work, sn.address, registry, extra=ctx.peer_args,
                            name="dfdaemon-warm-%s" % label.rstrip("%")).start().wait_ready()
            try:
                result["warm"][label] = _one(ctx, "warm", node, url, path, label, first)
            finally:
                node.stop()
    finally:
        seeder.stop()
        sn.stop()
    result["registry_bytes"]["warm"] = _sent(registry, digest, since)
    problems = ["%s: registry sent %d bytes of a %d-byte blob" % (k, v, size)
                for k, v in result["registry_bytes"].items() if v > size]
    result["problems"] = problems
    for kind, target in (("cold", COLD_TARGET_S), ("warm", WARM_TARGET_S)):
        times = [r["first_body_s"] for r in result[kind].values() if r["first_body_s"] is not None]
        result[kind + "_max_s"] = max(times) if times else None
        result[kind + "_ok"] = bool(times) and max(times) <= target
    return result
