"""The local API on a unix socket (``--api-socket``) with real processes: a
``twistd peer`` serving it owner-only, ``dfget --daemon-socket`` downloading
through it, the loopback API's rules holding on it, the socket gone at stop."""
import http.client
import json
import os
import socket
import stat

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from dragonfly.test import short_dir
from dragonfly.test.integration.harness import (
    MiB, SwarmMixin, metric, sha256_file, with_logs)

SIZE = 3 * MiB + 17


def _socket_request(path, method, target, headers, body=None):
    """(status, body) of one HTTP request over the unix socket C{path} (blocking)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    conn = http.client.HTTPConnection("localhost")
    conn.sock = sock
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ApiSocketTests(SwarmMixin, unittest.TestCase):
    timeout = 180

    @with_logs()
    async def test_dfget_through_the_socket(self):
        """A peer with --api-socket serves its API on a 0600 socket of its
        user; dfget --daemon-socket downloads through it (the TCP --daemon
        address answers nothing) and the peer did the download; a request
        with an Origin or a foreign Host is refused there as on TCP; the
        socket is removed when the peer stops."""
        swarm = self.swarm
        await swarm.start_origin({"f.bin": SIZE})
        await swarm.start_supernode()
        path = os.path.join(short_dir(self), "peer.sock")
        peer = await swarm.start_peer(extra=["--api-socket", path])
        st = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, os.getuid())
        self.assertEqual(peer.ports["api-socket"], path)

        result = await swarm.dfget(swarm.origin_url("f.bin"), args=["--daemon-socket", path])
        self.assertEqual(result.code, 0, repr(result))
        self.assertEqual(sha256_file(result.output), swarm.files["f.bin"][1])
        metrics = await peer.metrics(self.http)
        got = sum(metric(metrics, "dragonfly_peer_download_bytes_total", 0, source=s)
                  for s in ("peer", "supernode", "origin"))
        self.assertEqual(got, SIZE)   # the daemon fetched it, not an embedded peer

        body = json.dumps({"url": swarm.origin_url("f.bin")}).encode()
        for headers in ({"Origin": "http://attacker.example"},
                        {"Host": "attacker.example"}):
            status, _ = await deferToThread(
                _socket_request, path, "POST", "/api/v1/download",
                dict({"Content-Type": "application/json"}, **headers), body)
            self.assertEqual(status, 403, headers)
        status, raw = await deferToThread(_socket_request, path, "GET", "/healthz", {})
        self.assertEqual((status, json.loads(raw)["status"]), (200, "ok"))

        await peer.stop(reactor)
        self.assertEqual(peer.returncode, 0)   # a clean exit on TERM
        self.assertFalse(os.path.exists(path))
