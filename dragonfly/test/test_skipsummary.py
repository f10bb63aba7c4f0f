"""L{dragonfly.test.skipsummary}: skipped tests summarised after trial's output,
and a run with skips failed on request."""
import functools
import io
import sys

from twisted.trial import reporter, unittest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dragonfly.test import skipsummary


@functools.cache
def _sample_class():
    """Test cases run by the tests below through trial's own reporter (made
    here, out of trial's sight, so that a real run does not collect them)."""

    class Sample(SynchronousTestCase):

        def test_no_root(self):
            raise SkipTest("needs root")

        def test_no_skopeo(self):
            raise SkipTest("skopeo not installed")

        def test_no_root_either(self):
            raise SkipTest("needs root")

        def test_fine(self):
            pass

        def test_broken(self):
            self.fail("boom")

    return Sample


def trial_output(*names, reporter_class=reporter.TreeReporter):
    """What trial's reporter prints for a run of the sample's tests C{names}."""
    out = io.StringIO()
    result = reporter_class(out)
    suite = unittest.TestSuite([_sample_class()(n) for n in names])
    suite.run(result)
    result.done()
    return out.getvalue()


class ParseTests(SynchronousTestCase):

    def test_sections(self):
        """Each skip reason with its tests, as trial groups them; failures and
        the rest of the output are not skips."""
        text = trial_output("test_no_root", "test_no_skopeo", "test_no_root_either",
                            "test_fine", "test_broken")
        skips = skipsummary.parse_skips(io.StringIO(text))
        prefix = _sample_class()("test_fine").id()[:-len("test_fine")]
        self.assertEqual(skips, [
            ("needs root", [prefix + "test_no_root", prefix + "test_no_root_either"]),
            ("skopeo not installed", [prefix + "test_no_skopeo"])])

    def test_plain_reporter(self):
        """The plain (non-tree) reporter's output parses the same."""
        text = trial_output("test_no_skopeo", "test_fine", reporter_class=reporter.Reporter)
        self.assertEqual([r for r, _ in skipsummary.parse_skips(io.StringIO(text))],
                         ["skopeo not installed"])

    def test_none(self):
        text = trial_output("test_fine")
        self.assertEqual(skipsummary.parse_skips(io.StringIO(text)), [])
        self.assertEqual(skipsummary.format_summary([]), ["Skipped tests: none"])

    def test_format(self):
        """The summary counts the tests and lists them under their reason."""
        lines = skipsummary.format_summary([("needs root", ["a.T.t1", "a.T.t2"]),
                                            ("no skopeo", ["b.T.t"])])
        self.assertEqual(lines, ["Skipped tests: 3 (their checks did not run)",
                                 "  needs root", "      a.T.t1", "      a.T.t2",
                                 "  no skopeo", "      b.T.t"])


def script(text, code=0):
    """A command printing C{text} and exiting with C{code}, like a trial run."""
    return [sys.executable, "-c",
            f"import sys; sys.stdout.write({text!r}); sys.exit({code})"]


class MainTests(SynchronousTestCase):

    def run_main(self, *argv):
        out = io.StringIO()
        return skipsummary.main(list(argv), stdout=out), out.getvalue()

    def test_passes_output_and_summarises_at_the_end(self):
        """The command's output goes through, then the summary, as the last lines."""
        text = trial_output("test_no_root", "test_fine")
        code, out = self.run_main("--", *script(text))
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith(text))
        self.assertTrue(out.endswith("Skipped tests: 1 (their checks did not run)\n"
                                     "  needs root\n"
                                     f"      {_sample_class()('test_no_root').id()}\n"), out[-300:])

    def test_fail_on_skip(self):
        """With --fail-on-skip a passing run with a skip fails; without skips it passes."""
        code, out = self.run_main("--fail-on-skip", "--",
                                  *script(trial_output("test_no_root", "test_fine")))
        self.assertEqual(code, 1)
        self.assertIn("FAILED: tests were skipped", out)
        code, out = self.run_main("--fail-on-skip", "--", *script(trial_output("test_fine")))
        self.assertEqual(code, 0)
        self.assertTrue(out.endswith("Skipped tests: none\n"))

    def test_exit_status_kept(self):
        """A failing run keeps trial's exit status, skips or not."""
        code, _ = self.run_main("--fail-on-skip", "--", *script("FAILED\n", code=3))
        self.assertEqual(code, 3)
        code, _ = self.run_main("--", *script("FAILED\n", code=1))
        self.assertEqual(code, 1)

    def test_usage(self):
        self.assertEqual(self.run_main("trial")[0], 2)
        self.assertEqual(self.run_main("--")[0], 2)
