"""Run the ingest pipeline on one origin response: body -> pieces in the store.

Two paths, for the two kinds of origin answer:

  - L{stream_into}: the task's length is known (Content-Length or a 206's
    Content-Range) and its L{TaskFile} exists: the body goes through a
    L{PieceCutter} into a L{StoreWriter} from C{response.offset} on, with at
    most C{max_writes} piece writes in flight (the connection pauses at the
    limit), so pieces land and are announced while the rest still arrives;
  - L{spool_into}: no length: the body goes to a L{Spool}, then
    C{make_task(length)} creates the task and the spool is cut into it.

Both take C{track}, called with the Deferred a caller may cancel to drop the
origin connection (the body being delivered) and with None once it is not
cancellable any more; the CDN keeps it to stop jobs at shutdown.
"""
from dragonfly.ingest.cutter import PieceCutter
from dragonfly.ingest.events import IngestEvents
from dragonfly.ingest.splice import splice_into
from dragonfly.ingest.spool import Spool
from dragonfly.ingest.writer import StoreWriter

__all__ = ["stream_into", "spool_into"]


def _ignore(_):
    pass


def _stop(response, tf, events):
    """The piece a 206 body that ends before the file's end stops before."""
    if getattr(response, "status", 200) != 206 or getattr(response, "body_length", None) is None:
        return None
    end = response.offset + response.body_length
    if end >= tf.length:
        return None
    if end % tf.piece_size:
        raise events.misaligned(end)
    return end // tf.piece_size


def _spliceable(response, tf, stop):
    """C{response}'s body as a RawBody to splice into C{tf}'s pieces
    C{first}..C{stop}-1 (L{dragonfly.ingest.splice}), or None."""
    take = getattr(response, "take_body", None)
    if take is None or not tf.piece_count or response.offset % tf.piece_size:
        return None
    first = response.offset // tf.piece_size
    end = tf.length if stop is None else stop * tf.piece_size
    if response.body_length != end - response.offset \
            or any(tf.delivered(i) for i in range(first, stop or tf.piece_count)):
        return None
    return take()


async def stream_into(response, tf, runner, events=None, max_writes=2, recheck_held=False,
                      track=_ignore, content=None, splice=False):
    """Cut C{response}'s body into C{tf}'s pieces (see the module docstring).

    A 206 body may be a range of the file (it must end on a piece boundary).
    Held pieces are skipped, or with C{recheck_held} hashed and compared
    (C{events.changed} on a difference). Fails with what the body's delivery
    failed with (after the pieces in flight landed, so a retry writes none
    twice), or with C{events.short}/C{overflow} when the body does not fill
    C{tf} exactly. C{content}: a L{ContentHash} of C{tf} the pieces are added to.
    C{splice}: a large body from a plain TCP origin may be spliced from its
    socket into the file instead (L{dragonfly.ingest.splice}; the connection
    is then closed after it), when no piece it covers is held.
    """
    events = events if events is not None else IngestEvents()
    stop = _stop(response, tf, events)
    raw = _spliceable(response, tf, stop) if splice else None
    if raw is not None:
        await splice_into(raw, tf, response.offset // tf.piece_size,
                          tf.piece_count if stop is None else stop, events, track, content)
        return
    writer = StoreWriter(tf, runner, events, recheck_held, content)
    cutter = PieceCutter(tf, response.offset, max_writes, writer, events, stop)
    delivering = response.deliver(cutter)
    track(delivering)
    try:
        await delivering
    except BaseException:
        await cutter.drain()
        raise
    finally:
        track(None)
    await cutter.finish()


async def spool_into(response, make_task, runner, directory, events=None, max_bytes=0,
                     track=_ignore):
    """Spool C{response}'s body, then C{make_task(length)} -> TaskFile and fill it.

    Returns that TaskFile. C{max_bytes} caps the body (C{events.too_large}).
    The temporary file is gone when this returns or fails.
    """
    events = events if events is not None else IngestEvents()
    spool = await Spool.open(runner, directory, events, max_bytes)
    try:
        delivering = response.deliver(spool)
        track(delivering)
        try:
            await delivering
        finally:
            track(None)
        tf = make_task(spool.length)
        await spool.cut_into(StoreWriter(tf, runner, events))
        return tf
    finally:
        await spool.close()
