"""A compact, grow-only set of UUIDs.

Why this exists: the tool keeps two sets of ids that can reach millions of entries
(the ids already done in earlier runs, and the ids already seen in the input file, to
catch duplicates). A Python ``set`` of UUID strings costs roughly 100 bytes per id (a
36-character ``str`` object plus the set's own hash table), so 10 million ids would need
about 1 GB. ``UuidSet`` stores each id as its 16 raw bytes in one ``bytearray`` hash
table (open addressing, linear probing), about 16 bytes x capacity, i.e. ~27-53 bytes
per id depending on where the table is between doublings.

It supports only what the tool needs: add, membership, length and iteration (no removal,
which keeps linear probing simple: no tombstones).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

_SLOT = 16  # bytes per slot: one UUID
_EMPTY = bytes(_SLOT)  # an all-zero slot is empty, so the zero UUID is kept in a flag
_MIN_BITS = 4  # 16 slots to start with
_MAX_LOAD = 0.6  # linear probing degrades quickly above ~0.7
_M64 = (1 << 64) - 1
# Fibonacci hashing: multiplying by 2**64 / golden ratio (odd) and keeping the *high*
# bits spreads keys whose low bits are sequential or share a common pattern.
_MIX = 0x9E3779B97F4A7C15

UuidLike = uuid.UUID | str | bytes


def _key(value: UuidLike) -> bytes:
    """Return the 16 raw bytes of ``value``; ValueError if it is not a UUID."""
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


class UuidSet:
    """A set of UUIDs stored as 16-byte slots in a single ``bytearray``.

    Accepts ``uuid.UUID``, UUID strings in any case (and any form ``uuid.UUID`` accepts)
    or 16 raw bytes; iteration yields canonical lower-case strings.
    """

    __slots__ = ("_count", "_has_zero", "_mask", "_shift", "_slots")

    def __init__(self, iterable: Iterable[UuidLike] = ()) -> None:
        self._count = 0  # non-zero UUIDs stored in the table
        self._has_zero = False
        self._allocate(_MIN_BITS)
        self.update(iterable)

    def _allocate(self, bits: int) -> None:
        """Replace the table with an empty one of ``2**bits`` slots."""
        self._slots = bytearray(_SLOT << bits)
        self._mask = (1 << bits) - 1
        self._shift = 64 - bits

    @property
    def capacity(self) -> int:
        """Number of slots in the table."""
        return self._mask + 1

    @property
    def nbytes(self) -> int:
        """Bytes used by the slot table (the object headers are negligible)."""
        return len(self._slots)

    def _find(self, key: bytes) -> int:
        """Return the byte offset of ``key``'s slot, or of the empty slot where it goes."""
        slots = self._slots
        mask = self._mask
        value = int.from_bytes(key, "big")
        # Fold the high half into the low 64 bits so ids that differ only there spread too.
        index = ((((value >> 64) ^ value) * _MIX) & _M64) >> self._shift
        while True:
            offset = index << 4
            current = slots[offset : offset + _SLOT]
            if current in (key, _EMPTY):
                return offset
            index = (index + 1) & mask

    def add(self, value: UuidLike) -> bool:
        """Add ``value``; return True if it was not already in the set."""
        key = _key(value)
        if key == _EMPTY:
            added = not self._has_zero
            self._has_zero = True
            return added
        offset = self._find(key)
        if self._slots[offset : offset + _SLOT] == key:
            return False
        self._slots[offset : offset + _SLOT] = key
        self._count += 1
        if self._count > _MAX_LOAD * self.capacity:
            self._grow()
        return True

    def _grow(self) -> None:
        """Double the table and re-insert every stored key."""
        old = self._slots
        self._allocate(self._mask.bit_length() + 1)
        slots = self._slots
        for offset in range(0, len(old), _SLOT):
            key = bytes(old[offset : offset + _SLOT])
            if key != _EMPTY:
                new_offset = self._find(key)
                slots[new_offset : new_offset + _SLOT] = key

    def update(self, iterable: Iterable[UuidLike]) -> None:
        """Add every UUID from ``iterable``."""
        for value in iterable:
            self.add(value)

    def __contains__(self, value: object) -> bool:
        # Like a built-in set, asking about something that is not a UUID is just "no".
        try:
            key = _key(value)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return False
        if key == _EMPTY:
            return self._has_zero
        offset = self._find(key)
        return self._slots[offset : offset + _SLOT] == key

    def __len__(self) -> int:
        return self._count + self._has_zero

    def __iter__(self) -> Iterator[str]:
        if self._has_zero:
            yield _canonical(_EMPTY)
        slots = self._slots
        count = self._count
        for offset in range(0, len(slots), _SLOT):
            if self._count != count:
                raise RuntimeError("UuidSet changed size during iteration")
            key = bytes(slots[offset : offset + _SLOT])
            if key != _EMPTY:
                yield _canonical(key)

    def __repr__(self) -> str:
        return f"UuidSet(<{len(self)} ids, {self.nbytes} bytes>)"
