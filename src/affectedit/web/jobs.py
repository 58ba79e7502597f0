"""The job queue of the web server: one worker thread running jobs one at a time, earliest
deadline first, behind a bounded queue (see :class:`JobQueue`)."""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time

from affectedit.web.limits import HTTPError

# Job kinds and their slack in seconds (see JobQueue): the person dragging the dial waits for a
# preview; a full edit may wait a little longer; uploads are the slowest jobs.
PREVIEW, EDIT, UPLOAD = 0, 1, 2
SLACK = {PREVIEW: 0.0, EDIT: 0.25, UPLOAD: 0.5}


class JobQueue:
    """One worker thread runs the jobs one at a time, earliest deadline first: a job's deadline is
    its arrival time plus the slack of its kind (``SLACK[priority]``), so a preview overtakes an
    edit that arrived less than a quarter of a second before it, but nothing waits behind newer
    jobs for ever. At most ``max_pending`` jobs queued or running."""

    def __init__(self, max_pending: int, name: str = "affectedit-model"):
        self.max_pending = int(max_pending)
        self.pending = 0  # touched only on the event loop's thread
        self.most_at_once = 0
        self._heap: list = []
        self._count = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, priority: int, fn, *args):
        if self.pending >= self.max_pending:
            raise HTTPError(503, "the server is busy with other edits; try again in a moment")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending += 1
        try:
            with self._cv:
                if self._closed:
                    raise HTTPError(503, "the server is shutting down")
                deadline = time.monotonic() + SLACK.get(priority, 0.0)
                heapq.heappush(self._heap, (deadline, next(self._count), loop, future, fn, args))
                self._cv.notify()
            return await future
        finally:
            self.pending -= 1

    def _work(self):
        running = 0
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if self._closed and not self._heap:
                    return
                _, _, loop, future, fn, args = heapq.heappop(self._heap)
            if future.cancelled():
                continue
            running += 1
            self.most_at_once = max(self.most_at_once, running)
            try:
                result, error = fn(*args), None
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                result, error = None, e
            finally:
                running -= 1
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _settle(future, result, error):
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
