"""L{dragonfly.metrics.sample} and the integration harness's C{metric}: a
metric that does not exist is an error, never a 0; and the SPEC check itself."""
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.metrics import PeerMetrics, SupernodeMetrics, sample
from dragonfly.test.integration.harness import metric, parse_metrics
from dragonfly.test.metricspec import assert_spec_metrics


class SampleTests(SynchronousTestCase):

    def test_value(self):
        """An existing sample reads as its value, 0 included."""
        m = PeerMetrics()
        self.assertEqual(sample(m, "dragonfly_peer_upload_bytes_total"), 0)
        m.download_bytes.labels(source="peer").inc(5)
        self.assertEqual(sample(m, "dragonfly_peer_download_bytes_total", {"source": "peer"}), 5)

    def test_missing_raises(self):
        """A name or label value the registry does not have is a KeyError."""
        m = PeerMetrics()
        self.assertRaises(KeyError, sample, m, "dragonfly_peer_upload_bytes")
        self.assertRaises(KeyError, sample, m, "dragonfly_peer_download_bytes_total",
                          {"source": "p2p"})


class HarnessMetricTests(SynchronousTestCase):

    def setUp(self):
        m = PeerMetrics()
        m.download_bytes.labels(source="peer").inc(3)
        m.download_bytes.labels(source="origin").inc(4)
        m.mirror_requests.labels(kind="blob", code="200").inc()
        self.parsed = parse_metrics(m.render().decode())

    def test_sum(self):
        """Samples whose labels include the given ones are summed."""
        self.assertEqual(metric(self.parsed, "dragonfly_peer_download_bytes_total"), 7)
        self.assertEqual(metric(self.parsed, "dragonfly_peer_download_bytes_total",
                                source="origin"), 4)
        self.assertEqual(metric(self.parsed, "dragonfly_peer_upload_bytes_total"), 0)

    def test_missing_raises(self):
        """A missing name, or labels no sample has, is a KeyError unless
        C{missing} gives the value."""
        self.assertRaises(KeyError, metric, self.parsed, "dragonfly_peer_upload_bytes")
        self.assertRaises(KeyError, metric, self.parsed, "dragonfly_mirror_requests_total",
                          kind="blob", code="404")
        self.assertEqual(metric(self.parsed, "dragonfly_mirror_requests_total", kind="blob",
                                code="404", missing=0), 0)
        self.assertRaises(KeyError, metric, self.parsed, "dragonfly_mirror_blob",
                          missing=0)


class SpecCheckTests(SynchronousTestCase):

    def test_catches_a_rename(self):
        """The SPEC check fails on a page without a SPEC sample."""
        text = SupernodeMetrics().render().decode()
        assert_spec_metrics(self, text, "supernode")
        renamed = text.replace("dragonfly_supernode_upload_bytes", "dragonfly_sn_upload_bytes")
        self.assertRaises(self.failureException, assert_spec_metrics, self, renamed, "supernode")
        self.assertRaises(self.failureException, assert_spec_metrics, self, text, "peer")
