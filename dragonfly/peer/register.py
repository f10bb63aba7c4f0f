"""A download's registration at its supernode and the task file it prepares.

L{register} asks a supernode for the task (a verdict about the task is final:
L{DownloadError}; an answer for another task is refused) and takes the
answer's attestations; L{prepare_task_file} finds or creates the task file
of the answer's shape and version (the origin's validators of the
supernode's copy, for an If-Range on a later fallback to the origin).
"""
from twisted.logger import Logger

from dragonfly.control.client import EgressRefused, SupernodeUnavailable, TaskRefused
from dragonfly.control.messages import RegisterRequest
from dragonfly.peer.errors import DownloadError, OriginNotAllowed

__all__ = ["register", "prepare_task_file"]

_log = Logger()


async def register(client, dl, peer, prefer=None):
    """Register C{dl}'s task as C{peer}: (addr, L{RegisterAnswer}); at C{prefer}
    (a stopping supernode's next owner) first when given.

    A supernode's verdict about the task (L{TaskRefused}) is final: L{DownloadError}.
    """
    request = RegisterRequest(dl.task_id, dl.url, dl.headers, peer, filters=dl.filters,
                              tag=dl.tag, digest=dl.digest, want=dl.want)
    try:
        addr, info = await client.register(request, prefer)
    except EgressRefused as e:
        raise OriginNotAllowed(str(e)) from e
    except TaskRefused as e:
        raise DownloadError(str(e)) from e
    if info.task_id != dl.task_id:
        # Never take pieces of another task for this one.
        raise SupernodeUnavailable(f"the supernode answered for task {info.task_id}, "
                                   f"not {dl.task_id}")
    dl.attest(info.verified)   # before the task file is handed to the streams
    dl.promise(info.attests)
    return addr, info


def prepare_task_file(store, dl, info):
    """The task file C{dl} downloads into for the task C{info} describes: the
    store's, or a fresh one when it has none or one of another shape."""
    version = (getattr(info, "etag", None), getattr(info, "last_modified", None))
    tf = store.get(dl.task_id)
    if tf is None or tf.uncached or tf.length != info.length or tf.piece_size != info.piece_size:
        if tf is not None and not tf.uncached:
            _log.info("task {task} changed shape; starting it afresh", task=dl.task_id)
        tf = store.create(dl.task_id, dl.url, info.length, info.piece_size, *version)
    elif any(version) and (tf.etag, tf.last_modified) != version:
        # The pieces this download keeps are the swarm's (held ones only once
        # confirmed): a fallback to the origin resumes them with If-Range on
        # the version of the supernode's copy (backsource._checkable).
        tf.set_validators(*version)
    dl.set_task_file(tf)
    return tf
