"""``async with`` for the library's long-lived objects: started on entry, closed on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncResource:
    """Mixin: ``async with obj:`` awaits ``obj.start()`` on entry and ``obj.close()`` on exit.

    Subclasses define both; ``start`` may be skipped (the object starts lazily) but ``close``
    must always run, so ``async with`` is the safe way to hold one.
    """

    __slots__ = ()

    async def start(self) -> None:
        """Acquire what the object needs before its first use."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
