"""The paged KV cache's bookkeeping: a free-block pool and per-sequence block tables.

The cache memory itself is a :class:`jaxsched.engine.model.KVCache` (per layer, keys and
values of shape ``(num_blocks * block_size, N_kv, D)``); block ``b`` holds the slots
``[b * block_size, (b + 1) * block_size)``. A sequence owns a *block table*, the list of its
physical blocks in logical order: its token at position ``p`` lives in slot
``table[p // block_size] * block_size + p % block_size``. Blocks come from and return to a
:class:`BlockPool` (host side, LIFO free list, so freed blocks are reused first). Attention
reads through the table with a pure JAX gather (:mod:`jaxsched.engine.model`).

Tables are padded to a static width ``blocks_per_seq`` with block 0: padded entries are only
ever read at positions the causal mask hides, and writes of padding tokens are dropped.
"""

from __future__ import annotations

import numpy as np

from jaxsched.errors import JaxschedError

__all__ = ["BlockPool", "OutOfBlocks", "blocks_for", "pad_table", "token_slots"]


class OutOfBlocks(JaxschedError, RuntimeError):
    """The pool cannot satisfy an allocation (a bug in the capacity accounting)."""


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``tokens`` tokens: ``ceil(tokens / block_size)``."""
    return -(-int(tokens) // block_size)


class BlockPool:
    """A pool of ``num_blocks`` fixed-size blocks."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = int(num_blocks)
        self.block_size = int(block_size)
        self._free = list(range(self.num_blocks - 1, -1, -1))  # pop() gives 0, 1, 2, ...
        self._owned = np.zeros(self.num_blocks, bool)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, n: int) -> list[int]:
        """``n`` blocks off the free list; :class:`OutOfBlocks` if fewer are free."""
        if n > len(self._free):
            raise OutOfBlocks(f"KV cache out of blocks: need {n}, {len(self._free)} free of "
                              f"{self.num_blocks}")
        out = [self._free.pop() for _ in range(n)]
        self._owned[out] = True
        return out

    def grow(self, table: list[int], tokens: int) -> None:
        """Extend ``table`` in place so that it holds ``tokens`` tokens."""
        extra = blocks_for(tokens, self.block_size) - len(table)
        if extra > 0:
            table.extend(self.allocate(extra))

    def free(self, table: list[int]) -> None:
        """Return the blocks of ``table`` to the pool and empty it."""
        for blk in reversed(table):
            if not self._owned[blk]:
                raise RuntimeError(f"block {blk} freed twice")
            self._owned[blk] = False
            self._free.append(blk)
        table.clear()


def pad_table(table: list[int], width: int) -> np.ndarray:
    """The table as an int32 row of ``width`` entries, padded with block 0."""
    row = np.zeros(width, np.int32)
    row[: len(table)] = table
    return row


def token_slots(table: list[int], start: int, count: int, width: int,
                block_size: int, num_slots: int) -> np.ndarray:
    """Flat cache slots of positions ``start .. start + count - 1`` of a sequence, padded to
    ``width`` entries with ``num_slots`` (an out-of-range slot: the write is dropped)."""
    pos = np.arange(start, start + count)
    tab = np.asarray(table, np.int64)
    out = np.full(width, num_slots, np.int32)
    out[:count] = tab[pos // block_size] * block_size + pos % block_size
    return out
