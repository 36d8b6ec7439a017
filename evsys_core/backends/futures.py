"""The local backend's futures: Tinker's `APIFuture` (`.result()`, `await`, `result_async()`,
`.future()`, `.coroutine()`), answered in this process.

- `Done`: a value already computed (training calls run when called).
- `Queued`: a queued `sample`; waiting on it runs every pending request of its sampling client
  as one batch. Awaiting it first yields to the event loop once, so that coroutines gathered
  with it can queue their own requests into the same batch.
- `Ready`: mixed into the clients themselves, which are their own futures, as Tinker's
  client-creating methods return a future that can also be used as the client.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any, Callable

from tinker import APIFuture


def _concurrent(fn: Callable[[], Any]) -> Future:
    fut: Future = Future()
    try:
        fut.set_result(fn())
    except Exception as e:  # delivered to whoever waits on the future
        fut.set_exception(e)
    return fut


class Done(APIFuture):
    """A finished future."""

    def __init__(self, value: Any):
        self._value = value

    def result(self, timeout: float | None = None) -> Any:
        return self._value

    async def result_async(self, timeout: float | None = None) -> Any:
        return self.result()

    def future(self) -> Future:
        return _concurrent(self.result)

    def done(self) -> bool:
        return True


class Queued(APIFuture):
    """The future of a queued sampling request."""

    def __init__(self, flush: Callable[[], None], request: Any, post: Callable[[Any], Any] | None = None):
        self._flush, self._request, self._post = flush, request, post

    def result(self, timeout: float | None = None) -> Any:
        if not self._request.done:
            self._flush()
        if self._request.error is not None:
            raise self._request.error
        return self._post(self._request.response) if self._post else self._request.response

    async def result_async(self, timeout: float | None = None) -> Any:
        if not self._request.done:
            await asyncio.sleep(0)  # let gathered coroutines queue theirs first
        return self.result()

    def future(self) -> Future:
        return _concurrent(self.result)

    def done(self) -> bool:
        return self._request.done


class Ready:
    """A client that is also a finished future of itself."""

    def result(self, timeout: float | None = None) -> Any:
        return self

    async def result_async(self, timeout: float | None = None) -> Any:
        return self

    def future(self) -> Future:
        return _concurrent(lambda: self)

    async def coroutine(self) -> Any:
        return self

    def __await__(self):
        return self.result_async().__await__()
