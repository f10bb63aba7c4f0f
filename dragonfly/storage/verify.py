"""Re-reading a task's data file to check it: each piece against its digest, the whole
content against a content digest.

Blocking functions for a runner thread (never the reactor): they read the
file in bounded chunks (memory stays at one chunk whatever the file's size)
and return what they found. The supernode calls them when a holder reports a
task corrupt and before it publishes a task named by its content digest; the
store calls them for tasks left by an unclean stop.
"""
import hashlib

from dragonfly.digest import piece_hasher

__all__ = ["CHUNK", "content_digest", "bad_pieces"]

#: Bytes read at once.
CHUNK = 1 << 20


def _read_span(f, offset, length, update):
    """Feed C{length} bytes of C{f} from C{offset} to C{update}; False when the
    file ends before."""
    f.seek(offset)
    left = length
    while left > 0:
        data = f.read(min(CHUNK, left))
        if not data:
            return False
        update(data)
        left -= len(data)
    return True


def content_digest(path, length, algo="sha256"):
    """C{"<algo>:<hex>"} of the first C{length} bytes of the file at C{path}
    (a file shorter than C{length} hashes as far as it goes)."""
    h = hashlib.new(algo)
    try:
        with open(path, "rb") as f:
            _read_span(f, 0, length, h.update)
    except FileNotFoundError:
        pass
    return f"{algo}:{h.hexdigest()}"


def bad_pieces(path, piece_size, length, digests):
    """The indexes of the pieces whose bytes do not hash to their digest.

    C{digests} holds one hex piece digest per piece, None for a piece not
    held (not checked). A piece the file cannot supply in full is bad; a file
    that cannot be opened makes every held piece bad.
    """
    held = [i for i, d in enumerate(digests) if d is not None]
    try:
        f = open(path, "rb")
    except OSError:
        return held
    bad = []
    with f:
        for i in held:
            offset = i * piece_size
            h = piece_hasher()
            try:
                complete = _read_span(f, offset, min(piece_size, length - offset), h.update)
            except OSError:
                complete = False
            if not complete or h.hexdigest() != digests[i]:
                bad.append(i)
    return bad
