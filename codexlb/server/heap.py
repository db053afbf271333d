"""The garbage collector set for a server that holds thousands of long streams.

CPython's full collection walks every tracked object, and it runs whenever the objects that survived into
the oldest generation grew by a quarter since the last one. A proxy holding thousands of streams, each
hundreds of objects that live for minutes, makes that several hundred thousand objects walked every few
seconds while every stream waits: 2,000 paced streams saw 8 full collections of up to 264 ms in 14 s.
So, before serving: what start-up made (modules and settings, about 50,000 objects) is frozen out of
every collection, and the young generation is collected every `_YOUNG` allocations instead of 700, which
also makes the full collections that follow from it rarer.
"""

from __future__ import annotations

import gc

_YOUNG = 10_000


def settle() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG, older, oldest)
