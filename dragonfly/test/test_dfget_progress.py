"""dfget.progress: the terminal progress bar."""
import io

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dragonfly.dfget.progress import ProgressBar


class ProgressBarTests(SynchronousTestCase):

    def test_bar(self):
        """The bar redraws at most every interval and ends with a newline."""
        clock = Clock()
        out = io.StringIO()
        bar = ProgressBar(out, clock, label="f", width=80)
        bar.update(0, 1000)
        bar.update(100, 1000)
        self.assertEqual(out.getvalue().count("\r"), 1)
        clock.advance(1)
        bar.update(500, 1000)
        self.assertIn(" 50%", out.getvalue())
        bar.finish()
        self.assertTrue(out.getvalue().endswith("\n"))
        self.assertTrue(all(len(x) <= 83 for x in out.getvalue().split("\r")))
