"""A real eStargz image read through two dfdaemons the way stargz-snapshotter reads it.

A multi-file image is built offline, pushed to a local ``docker-registry``
with ``skopeo``, pulled into a private ``containerd`` and converted to
eStargz there with ``ctr-remote images convert --estargz --oci`` (Debian's
stargz-snapshotter package ships ``ctr-remote``, not the snapshotter), then
pushed back. Then, through the mirrors of two dfdaemons sharing a fresh
supernode (nobody holds the layer: the first ranges are cold), the test
does what the snapshotter does: the layer's footer (its last 51 bytes, which
name the table of contents' offset), the table of contents (a gzip member
holding ``stargz.index.json``), then three regular files chosen from it, each
by its own Range, each file's bytes compared with the original; then a full
GET of every blob of the image through the mirror, each checked against its
digest. The registry's log shows each blob sent once in all, the layer in
more than one request (its covering pieces first, the rest after).
"""
import io
import json
import os
import tarfile
import zlib

from twisted.internet import reactor
from twisted.trial import unittest

from dragonfly.test.integration import registry_fixtures as rf
from dragonfly.test.integration import registry_setup as rs
from dragonfly.test.integration.harness import HTTP, Swarm, with_logs

SOURCE, TARGET, TAG = "dragonfly/plain", "dragonfly/estargz", "v1"
FOOTER = 51
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _files():
    """A few files of random (incompressible) bytes: the layer spans several 1M pieces."""
    sizes = {"bin/tool": 900_000, "etc/config.json": 2_000, "lib/libbig.so": 1_700_000,
             "usr/share/doc/README": 40_000, "var/data.bin": 1_200_000}
    return {name: os.urandom(size) for name, size in sizes.items()}


def build_layout(root, files):
    """An OCI layout of one gzipped layer holding C{files}; returns the manifest digest."""
    blobs = os.path.join(root, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        digest = rf.sha256_digest(data)
        with open(os.path.join(blobs, digest.split(":", 1)[1]), "wb") as f:
            f.write(data)
        return digest

    layer, diff_id = rf.make_layer(files)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(layer), "size": len(layer)}]}).encode()
    digest = put(manifest)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": TAG}}]}, f)
    return digest


def toc_offset(footer):
    """The TOC's offset named by an eStargz footer (a gzip header whose extra
    field is ``SG``, 22, then ``%016x`` of the offset and ``STARGZ``)."""
    assert len(footer) == FOOTER and footer[:2] == b"\x1f\x8b", footer
    extra = footer[12:12 + int.from_bytes(footer[10:12], "little")]
    assert extra[:2] == b"SG" and extra[20:] == b"STARGZ", extra
    return int(extra[4:20], 16)


def gunzip_member(data):
    """The content of the first gzip member of C{data} (what follows is ignored)."""
    d = zlib.decompressobj(zlib.MAX_WBITS | 16)
    out = d.decompress(data)
    assert d.eof, "gzip member cut short"
    return out


class EStargzTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        missing = [name for name, path in (("docker-registry", rf.DOCKER_REGISTRY),
                                           ("skopeo", "/usr/bin/skopeo"),
                                           ("containerd", "/usr/bin/containerd"),
                                           ("ctr-remote", "/usr/bin/ctr-remote"))
                   if rf.which(name, path) is None]
        if missing:
            raise unittest.SkipTest(f"{' and '.join(missing)} not installed")
        if os.geteuid() != 0:
            raise unittest.SkipTest("containerd needs root")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.http = HTTP(reactor)
        self.addCleanup(self.http.close)
        self.swarm = Swarm(reactor, self.workdir, self.http)
        self.addCleanup(self.swarm.stop)

    async def convert(self, files):
        """Push the plain image, convert it to eStargz with ctr-remote in a
        private containerd, push that: the eStargz image's manifest."""
        self.registry = await rs.start_registry(
            self, reactor, os.path.join(self.workdir, "registry"))
        layout = os.path.join(self.workdir, "image")
        build_layout(layout, files)
        await rs.push_layout(self, reactor, self.workdir, layout, TAG,
                             f"{self.registry.hostport}/{SOURCE}:{TAG}")
        ctd = rf.Containerd(self.workdir, ctr=rf.which("ctr-remote", "/usr/bin/ctr-remote"))
        self.addCleanup(ctd.stop, reactor)
        await ctd.start(reactor)
        src = f"{self.registry.hostport}/{SOURCE}:{TAG}"
        dst = f"{self.registry.hostport}/{TARGET}:{TAG}"
        for name, args in (("ctr-pull", ["images", "pull", "--plain-http", src]),
                           ("ctr-convert", ["images", "convert", "--estargz", "--oci", src, dst]),
                           ("ctr-push", ["images", "push", "--plain-http", dst])):
            code, out, err = await ctd.ctr(reactor, name, args, timeout=120)
            self.assertEqual(code, 0, f"ctr-remote {' '.join(args)} failed:\n{out}\n{err}")
        code, _, body = await self.http.request(
            "GET", f"{self.registry.url}/v2/{TARGET}/manifests/{TAG}",
            headers={"Accept": OCI_MANIFEST})
        self.assertEqual(code, 200, body[:300])
        return json.loads(body)

    async def ranged(self, node, digest, first, last, length):
        url = node.mirror + f"/v2/{TARGET}/blobs/{digest}"
        code, headers, body = await self.http.request(
            "GET", url, headers={"Range": f"bytes={first}-{last}"}, timeout=60)
        self.assertEqual(code, 206, body[:300])
        self.assertEqual(headers.getRawHeaders("content-range"),
                         [f"bytes {first}-{last}/{length}"])
        self.assertEqual(len(body), last - first + 1)
        return body

    @with_logs()
    async def test_snapshotter_reads_then_full_pull(self):
        """Footer, TOC and three files of a real eStargz layer, by Range through
        two dfdaemons, are the original bytes; a full pull then verifies every
        blob; the registry sent each blob once in all."""
        files = _files()
        manifest = await self.convert(files)
        [layer] = manifest["layers"]
        self.assertIn("containerd.io/snapshot/stargz/toc.digest", layer.get("annotations", {}))
        digest, length = layer["digest"], layer["size"]
        await self.swarm.start_supernode(piece_size="1M")
        one = await rf.start_dfdaemon(self.swarm, self.registry)
        two = await rf.start_dfdaemon(self.swarm, self.registry)

        footer = await self.ranged(one, digest, length - FOOTER, length - 1, length)   # cold
        toc_at = toc_offset(footer)
        member = await self.ranged(two, digest, toc_at, length - FOOTER - 1, length)
        with tarfile.open(fileobj=io.BytesIO(gunzip_member(member))) as tar:
            toc = json.load(tar.extractfile("stargz.index.json"))
        entries = [e for e in toc["entries"] if e.get("type") == "reg" and e.get("size")]
        by_name = {e["name"]: e for e in entries}
        # Every file of the image, and nothing else but eStargz's landmark file.
        self.assertEqual(set(by_name) - set(files), {".no.prefetch.landmark"} & set(by_name))
        self.assertLessEqual(set(files), set(by_name), toc["entries"])
        offsets = sorted({e["offset"] for e in toc["entries"] if "offset" in e} | {toc_at})
        for i, name in enumerate(("lib/libbig.so", "etc/config.json", "var/data.bin")):
            e = by_name[name]
            self.assertEqual(e["size"], len(files[name]))
            end = offsets[offsets.index(e["offset"]) + 1]
            node = (one, two)[i % 2]
            data = await self.ranged(node, digest, e["offset"], end - 1, length)
            got = gunzip_member(data)   # the file's bytes, then tar padding and the next header
            self.assertEqual(got[:e["size"]], files[name], f"{name}: wrong bytes through the mirror")

        blobs = {manifest["config"]["digest"]: manifest["config"]["size"], digest: length}
        for d, size in blobs.items():
            code, _, body = await self.http.request(
                "GET", two.mirror + f"/v2/{TARGET}/blobs/{d}", timeout=60)
            self.assertEqual(code, 200)
            self.assertEqual((len(body), rf.sha256_digest(body)), (size, d))
        for d, size in blobs.items():
            gets = self.registry.blob_gets(d)
            sent = sum(r["written"] for r in gets)
            self.assertEqual(sent, size, f"registry sent {sent} bytes of {d} ({size}): {gets}")
        self.assertGreater(len(self.registry.blob_gets(digest)), 1,
                           "the cold layer was not fetched by ranges")
