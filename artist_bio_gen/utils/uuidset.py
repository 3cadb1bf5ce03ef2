"""A compact, grow-only set of UUIDs.

Why this exists: the tool keeps sets of ids that can reach millions of entries (the ids
already done in earlier runs, the ids already seen in the input, to catch duplicates). A
Python ``set`` of UUID strings costs roughly 100 bytes per id (a 36-character ``str`` plus
the set's own table), so 10 million ids would need about 1 GB.

``UuidSet`` keeps each id as its 16 raw bytes, packed into one ``bytes`` object per hash
bucket (bucket = the built-in ``hash`` of the 16 bytes, masked). A lookup is one hash, one
list index and one ``bytes.find`` over a bucket of about 4 to 8 ids, all in C, so it costs
well under a microsecond; memory is about 21-27 bytes per id. Buckets are immutable
``bytes`` rather than ``bytearray``: the ids sit in the object itself, so a lookup touches
one object instead of an object and its separate buffer (a third faster on a million
random lookups), and nothing is over-allocated; an ``add`` copies its bucket (a few
hundred bytes). The table doubles its bucket count when the average bucket passes 8 ids:
buckets of 8 rather than 16 cost 2.7 more bytes per id and made a resume's bulk load of a
million ids 0.55 -> 0.38 s and its look-up of a million input lines 1.03 -> 0.91 s.
Copying one set into another is linear (the destination is sized first).

It supports only what the tool needs: add, membership, length and iteration (no removal).
"""

from __future__ import annotations

import struct
import sys
import uuid
from collections.abc import Iterable, Iterator, Sized
from operator import itemgetter

_SLOT = 16  # bytes per id
_MIN_BITS = 4  # 16 buckets to start with
_TARGET = 8  # average ids per bucket before the bucket count doubles

UuidLike = uuid.UUID | str | bytes

# Splitting a packed blob into 16-byte keys in C: ``map(_first, _unpack(blob))``.
_unpack = struct.Struct(f"{_SLOT}s").iter_unpack
_first = itemgetter(0)


def _key(value: object) -> bytes:
    """Return the 16 raw bytes of ``value``; ValueError if it is not a UUID.

    Takes any object (``__contains__`` may be asked about anything): TypeError if it is not
    a UUID, a str or 16 bytes.
    """
    if type(value) is str:  # the common case first
        return _str_key(value)
    if isinstance(value, bytes | bytearray):
        if len(value) != _SLOT:
            raise ValueError(f"expected 16 bytes for a UUID, got {len(value)}")
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, str):
        return _str_key(value)
    raise TypeError(f"expected a UUID, str or 16 bytes, got {type(value).__name__}")


def _str_key(text: str) -> bytes:
    """Parse a UUID string; the canonical 8-4-4-4-12 form takes a fast path."""
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        hex32 = text[:8] + text[9:13] + text[14:18] + text[19:23] + text[24:]
        try:
            raw = bytes.fromhex(hex32)
        except ValueError:
            raw = b""
        # fromhex tolerates spaces, so a short result means the text was not pure hex.
        if len(raw) == _SLOT:
            return raw
    return uuid.UUID(text).bytes  # braces, urn:uuid:, no hyphens; ValueError otherwise


def _canonical(raw: bytes) -> str:
    """Format 16 raw bytes as the canonical lower-case UUID string."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _holds(bucket: bytes, key: bytes) -> bool:
    """Whether ``key`` is one of the 16-byte records packed in ``bucket``."""
    at = bucket.find(key)
    # A match that straddles two records is not a member; keep looking past it.
    while at >= 0:
        if not at % _SLOT:
            return True
        at = bucket.find(key, at + 1)
    return False


class UuidSet:
    """A set of UUIDs packed 16 bytes each into hash buckets.

    Accepts ``uuid.UUID``, UUID strings in any case (and any form ``uuid.UUID`` accepts)
    or 16 raw bytes; iteration yields canonical lower-case strings.
    """

    __slots__ = ("_buckets", "_count", "_mask")

    def __init__(self, iterable: Iterable[UuidLike] = ()) -> None:
        self._count = 0
        self._allocate(_MIN_BITS)
        self.update(iterable)

    def _allocate(self, bits: int) -> None:
        """Replace the table with ``2**bits`` empty buckets."""
        self._buckets: list[bytes] = [b""] * (1 << bits)
        self._mask = (1 << bits) - 1

    @property
    def capacity(self) -> int:
        """Ids the table holds before its bucket count doubles."""
        return len(self._buckets) * _TARGET

    @property
    def nbytes(self) -> int:
        """Bytes used by the buckets and the bucket list."""
        return sys.getsizeof(self._buckets) + sum(sys.getsizeof(b) for b in self._buckets)

    def add(self, value: UuidLike) -> bool:
        """Add ``value``; return True if it was not already in the set."""
        return self._add_key(_key(value))

    def _add_key(self, key: bytes) -> bool:
        index = hash(key) & self._mask
        bucket = self._buckets[index]
        if _holds(bucket, key):
            return False
        self._buckets[index] = bucket + key
        self._count += 1
        if self._count > self.capacity:
            self._rehash(self._mask.bit_length() + 1)
        return True

    def reserve(self, count: int) -> None:
        """Size the table for ``count`` ids at once (saves the doublings on a bulk load)."""
        bits = self._mask.bit_length()
        while (1 << bits) * _TARGET < count:
            bits += 1
        if bits > self._mask.bit_length():
            self._rehash(bits)

    def _rehash(self, bits: int) -> None:
        """Move every id into a table of ``2**bits`` buckets.

        Each old bucket is dropped as soon as its ids have moved, so the memory it frees
        takes the next ids: the set never holds its ids twice. (Holding the whole old table
        until the end made each doubling a peak of twice the set's size, which the process
        kept as resident memory, so peak RSS grew by about 45 bytes per id, not 22.)
        """
        old = self._buckets
        self._allocate(bits)
        buckets, mask = self._buckets, self._mask
        for index in range(len(old)):
            bucket, old[index] = old[index], b""
            for offset in range(0, len(bucket), _SLOT):
                key = bucket[offset : offset + _SLOT]
                buckets[hash(key) & mask] += key
            del bucket  # its memory is free for the next bucket's ids

    def _keys(self) -> Iterator[bytes]:
        for bucket in self._buckets:
            for offset in range(0, len(bucket), _SLOT):
                yield bytes(bucket[offset : offset + _SLOT])

    def update(self, iterable: Iterable[UuidLike]) -> None:
        """Add every UUID from ``iterable``."""
        if isinstance(iterable, UuidSet):
            self.reserve(len(self) + len(iterable))
            keys = iterable._keys()
            for key in list(keys) if iterable is self else keys:
                self._add_key(key)
            return
        if isinstance(iterable, Sized):
            self.reserve(len(self) + len(iterable))
        for value in iterable:
            self.add(value)

    def update_packed(self, blob: bytes, *, all_new: bool = False) -> None:
        """Add the ids packed 16 bytes each in ``blob`` (a bulk load from the database).

        ``all_new`` is the caller's promise that no id of ``blob`` is in the set yet and
        none repeats (e.g. disjoint chunks of a unique index); it skips the lookups.
        """
        if len(blob) % _SLOT:
            raise ValueError("a packed id blob must be a multiple of 16 bytes long")
        self.reserve(self._count + len(blob) // _SLOT)
        buckets, mask = self._buckets, self._mask
        # The hot loops of a resume over millions of ids: kept flat on purpose. Each append
        # makes a new bytes object of its bucket (measured: faster than appending to
        # bytearrays and turning them into bytes, and no bigger a peak).
        if all_new:
            for offset in range(0, len(blob), _SLOT):
                key = blob[offset : offset + _SLOT]
                buckets[hash(key) & mask] += key
            self._count += len(blob) // _SLOT
            return
        for offset in range(0, len(blob), _SLOT):
            key = blob[offset : offset + _SLOT]
            index = hash(key) & mask
            if not _holds(buckets[index], key):
                buckets[index] += key
                self._count += 1

    def _buckets_of(self, keys: list[bytes]) -> Iterator[bytes]:
        """The bucket of each key, in order (lazily, in C)."""
        return map(self._buckets.__getitem__, map(self._mask.__and__, map(hash, keys)))

    def leading_members(self, blob: bytes) -> int:
        """How many ids at the start of ``blob`` (packed 16 bytes each) are members: the
        index of the first id that is not, or all of them.

        A resume asks this for thousands of input lines at once: the lookups run in C, and
        only a block with a miss (or a match off a record boundary) is looked at id by id.
        """
        if len(blob) % _SLOT:
            raise ValueError("a packed id blob must be a multiple of 16 bytes long")
        keys = list(map(_first, _unpack(blob)))
        found = list(map(bytes.find, self._buckets_of(keys), keys))
        # -1 (absent) and an offset inside a record both have low bits set.
        if not any(map((_SLOT - 1).__and__, found)):
            return len(keys)
        for index, (key, at) in enumerate(zip(keys, found, strict=True)):
            if at < 0 or (at % _SLOT and not _holds(self._buckets[hash(key) & self._mask], key)):
                return index
        return len(keys)

    def __contains__(self, value: object) -> bool:
        # A resume asks this once per input row, with the id text: the canonical form takes
        # a fast path (its 32 hex digits are the id; other forms go through uuid.UUID).
        if type(value) is str and len(value) == 36:
            try:
                key = bytes.fromhex(value.replace("-", ""))
            except ValueError:
                return False
            if len(key) != _SLOT:
                return False
        else:
            # Like a built-in set, asking about something that is not a UUID is just "no".
            try:
                key = _key(value)
            except (ValueError, TypeError):
                return False
        bucket = self._buckets[hash(key) & self._mask]
        at = bucket.find(key)
        # The common answers (absent, or found at a record boundary) without a call.
        if at < 0:
            return False
        return not at % _SLOT or _holds(bucket, key)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        count = self._count
        for key in self._keys():
            if self._count != count:
                raise RuntimeError("UuidSet changed size during iteration")
            yield _canonical(key)

    def __repr__(self) -> str:
        return f"UuidSet(<{len(self)} ids, {self.nbytes} bytes>)"
