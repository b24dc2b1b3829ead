"""A bounded store: least recently used entries leave first once the bytes held pass a stated limit.

The app keeps models, statistics and analyses in stores like this one (ui/state.py): one per browser
session for what that session opened, and one server-wide store for read-only models by content hash.
Keys are typed (frozen dataclasses), sizes are measured when an entry is put (deep_size), and an entry
larger than the whole limit is refused in one sentence rather than emptying the store for nothing.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import numpy as np

from quantviz.errors import QuantvizError

K = TypeVar("K", bound=Hashable)
MAX_DEPTH = 12  # deep_size stops descending here (records of records of arrays are shallow)


def deep_size(value: object) -> int:
    """Bytes an object holds, counting numpy arrays by their buffers, protobuf messages by their
    serialized size, containers, dataclasses and plain objects by what they reference (each object once)."""
    seen: set[int] = set()

    def size(v: object, depth: int) -> int:
        if id(v) in seen or depth > MAX_DEPTH:
            return 0
        seen.add(id(v))
        if isinstance(v, np.ndarray):
            return int(v.nbytes) + (size(v.base, depth + 1) if isinstance(v.base, np.ndarray) else 0)
        if isinstance(v, bytes | bytearray | memoryview | str):
            return sys.getsizeof(v)
        byte_size = getattr(v, "ByteSize", None)
        if callable(byte_size):  # a protobuf message (an onnx ModelProto)
            return int(byte_size())
        total = sys.getsizeof(v)
        if isinstance(v, Mapping):
            return total + sum(size(k, depth + 1) + size(x, depth + 1) for k, x in v.items())
        if isinstance(v, list | tuple | set | frozenset):
            return total + sum(size(x, depth + 1) for x in v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            names = {f.name for f in dataclasses.fields(v)}
            cached = [x for k, x in getattr(v, "__dict__", {}).items() if k not in names]  # cached_property values
            return total + sum(size(getattr(v, n), depth + 1) for n in names) + sum(size(x, depth + 1) for x in cached)
        attrs = getattr(v, "__dict__", None)
        if isinstance(attrs, dict):
            return total + size(attrs, depth + 1)
        return total

    return size(value, 0)


@dataclasses.dataclass(frozen=True)
class Entry:
    value: object
    nbytes: int


class ByteLRU(Generic[K]):
    """Entries by key, least recently used first out when the bytes held would pass `limit_bytes`.

    get() marks an entry as used. put() measures the value (or takes `nbytes`), evicts the least
    recently used entries until it fits, and returns the keys it evicted. Nothing here is shared
    implicitly: whoever holds the store decides who may reach it.
    """

    def __init__(self, limit_bytes: int, sizer: Callable[[object], int] = deep_size) -> None:
        if limit_bytes <= 0:
            raise QuantvizError(f"A store needs a positive byte limit, not {limit_bytes}.")
        self.limit_bytes = int(limit_bytes)
        self._sizer = sizer
        self._entries: OrderedDict[K, Entry] = OrderedDict()
        self._bytes = 0

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> Iterator[K]:
        return iter(list(self._entries))

    def get(self, key: K, default: Any = None) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return default
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: K, value: object, nbytes: int | None = None) -> list[K]:
        """Store `value` under `key`; returns the keys evicted to make room."""
        n = self._sizer(value) if nbytes is None else int(nbytes)
        if n > self.limit_bytes:
            raise QuantvizError(
                f"This result needs {n / 2**20:.1f} MiB, more than the {self.limit_bytes / 2**20:.0f} MiB "
                "this store may hold: use a smaller model or fewer samples."
            )
        self.pop(key)
        evicted: list[K] = []
        while self._entries and self._bytes + n > self.limit_bytes:
            old, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes
            evicted.append(old)
        self._entries[key] = Entry(value, n)
        self._bytes += n
        return evicted

    def pop(self, key: K) -> Any:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._bytes -= entry.nbytes
        return entry.value

    def drop_where(self, predicate: Callable[[K], bool]) -> int:
        """Remove every entry whose key matches; returns how many."""
        doomed = [k for k in self._entries if predicate(k)]
        for k in doomed:
            self.pop(k)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
