"""Run trial and end its output with the skipped tests and why (make test);
with --fail-on-skip a run that skipped anything fails (make test-all, CI).

    python -m dragonfly.test.skipsummary [--fail-on-skip] -- trial -j2 dragonfly

Trial's own output passes through unchanged; its [SKIPPED] sections (one per
reason, listing the tests) are collected from it and summarised after its
last line, where a reader of a green run looks.
"""
import subprocess
import sys

__all__ = ["format_summary", "main", "parse_skips"]

_DOUBLE = "=" * 79
_SINGLE = "-" * 79


def parse_skips(lines):
    """The [SKIPPED] sections of trial's output C{lines}: [(reason, [test id])]."""
    out = []
    lines = [line.rstrip("\n") for line in lines]
    i = 0
    while i < len(lines):
        if lines[i] == _DOUBLE and i + 1 < len(lines) and lines[i + 1] == "[SKIPPED]":
            i += 2
            reason = []
            while i < len(lines) and lines[i] != "":
                reason.append(lines[i])
                i += 1
            i += 1
            tests = []
            while i < len(lines) and lines[i] not in (_DOUBLE, _SINGLE) and lines[i]:
                tests.append(lines[i])
                i += 1
            out.append(("\n".join(reason), tests))
        else:
            i += 1
    return out


def format_summary(skips):
    """The summary lines printed at the end."""
    count = sum(len(tests) for _, tests in skips)
    if not count:
        return ["Skipped tests: none"]
    text = [f"Skipped tests: {count} (their checks did not run)"]
    for reason, tests in skips:
        text.append("  " + reason.replace("\n", "\n  "))
        text.extend("      " + t for t in tests)
    return text


def main(argv, stdout=None):
    """Run the command after C{--}; trial's exit status, or 1 for a skip with
    --fail-on-skip."""
    stdout = stdout or sys.stdout
    fail_on_skip = "--fail-on-skip" in argv[:argv.index("--")] if "--" in argv else False
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        stdout.write("usage: skipsummary [--fail-on-skip] -- TRIAL ARGS...\n")
        return 2
    command = argv[argv.index("--") + 1:]
    seen = []
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    try:
        for line in proc.stdout:
            stdout.write(line)
            stdout.flush()
            seen.append(line)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    skips = parse_skips(seen)
    stdout.write("\n" + "\n".join(format_summary(skips)) + "\n")
    if code == 0 and fail_on_skip and skips:
        stdout.write("FAILED: tests were skipped; install what they need (.ci/run does)\n")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
