"""A one-line progress bar for dfget on a terminal (stderr)."""
import shutil

__all__ = ["ProgressBar", "human_bytes"]


def human_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _eta(seconds):
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """Redraws C{\\r[####....]  42%  1.2 MiB/3.0 MiB  5.1 MiB/s  ETA 0:03} at most every
    C{interval} seconds of C{clock}; C{finish()} draws the last state and ends the line.
    """

    def __init__(self, stream, clock, label="", interval=0.2, width=None):
        self._stream = stream
        self._clock = clock
        self.label = label
        self.interval = interval
        self._width = width
        self._start = clock.seconds()
        self._last_draw = None
        self._samples = []      # (time, completed) for the speed estimate
        self.completed = 0
        self.total = None
        self._drawn = False
        self._closed = False

    def _columns(self):
        if self._width is not None:
            return self._width
        try:
            return shutil.get_terminal_size((80, 24)).columns
        except (OSError, ValueError):
            return 80

    def update(self, completed, total=None):
        if self._closed:
            return
        now = self._clock.seconds()
        self.completed = completed
        if total is not None:
            self.total = total
        self._samples.append((now, completed))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5:
            self._samples.pop(0)
        if self._last_draw is None or now - self._last_draw >= self.interval:
            self._draw(now)

    def speed(self, now=None):
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def line(self, now=None):
        now = self._clock.seconds() if now is None else now
        cols = max(20, self._columns() - 1)
        speed = self.speed(now)
        parts = []
        if self.total:
            pct = min(100, int(self.completed * 100 / self.total))
            parts.append(f"{pct:3d}%")
            parts.append(f"{human_bytes(self.completed)}/{human_bytes(self.total)}")
        else:
            parts.append(human_bytes(self.completed))
        if speed > 0:
            parts.append(f"{human_bytes(speed)}/s")
            if self.total and self.completed < self.total:
                parts.append(f"ETA {_eta((self.total - self.completed) / speed)}")
        tail = "  ".join(parts)
        label = self.label
        room = cols - len(tail) - 4
        if self.total and room >= 12:
            bar_w = min(40, room - (len(label) + 1 if label else 0))
            if bar_w < 10:
                label = ""
                bar_w = min(40, room)
            filled = int(bar_w * min(self.completed, self.total) / self.total)
            bar = "[" + "#" * filled + "." * (bar_w - filled) + "]"
            text = f"{label + ' ' if label else ''}{bar} {tail}"
        else:
            text = tail
        return text[:cols]

    def _draw(self, now):
        self._last_draw = now
        text = self.line(now)
        self._stream.write("\r" + text + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def finish(self):
        """Draw the final state (if anything was drawn) and end the line."""
        if self._closed:
            return
        if self._drawn or self.completed:
            self._draw(self._clock.seconds())
            self._stream.write("\n")
            self._stream.flush()
        self._closed = True

    def abort(self):
        """End the bar's line without redrawing (before an error message)."""
        if self._drawn and not self._closed:
            self._stream.write("\n")
            self._stream.flush()
        self._closed = True
