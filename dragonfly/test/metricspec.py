"""The counters SPEC (README, docs/operations.md) promises on each role's
/metrics, and an assertion that a rendered page has every one of them."""
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SPEC", "assert_spec_metrics"]

_PEER = [("dragonfly_peer_download_bytes_total", {"source": s})
         for s in ("peer", "supernode", "origin")] + [("dragonfly_peer_upload_bytes_total", {})]

SPEC = {
    "supernode": [("dragonfly_supernode_origin_bytes_total", {}),
                  ("dragonfly_supernode_upload_bytes_total", {})],
    "peer": _PEER,
    "dfdaemon": _PEER,
}


def assert_spec_metrics(case, text, role):
    """Fail C{case} unless Prometheus C{text} has a sample for each of C{role}'s
    SPEC counters, with exactly the SPEC labels."""
    if isinstance(text, bytes):
        text = text.decode()
    have = {(s.name, frozenset(s.labels.items()))
            for family in text_string_to_metric_families(text) for s in family.samples}
    missing = [(name, labels) for name, labels in SPEC[role]
               if (name, frozenset(labels.items())) not in have]
    case.assertEqual(missing, [], f"{role} /metrics lacks SPEC samples")
