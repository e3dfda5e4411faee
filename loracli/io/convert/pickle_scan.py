"""A bounded check of a pickle's opcode stream, run before the (restricted) unpickler sees a byte of it.

The restricted unpickler stops code from running, but a pickle can still exhaust the reader with a few bytes:
a deeply nested tuple used as a dict key overflows the C stack when it is hashed (a segfault, no message),
``LONG_BINPUT 0xffffffff`` makes the C unpickler allocate a memo table of 32 GiB, and a broken memo or a
size that lies about the bytes behind it fails deep inside the reader. :func:`scan` walks the opcodes with
:func:`pickletools.genops` (whose argument readers never read past the data they are given, so a declared
size larger than the rest of the stream is an error, not an allocation) and simulates the stack and memo:

- nesting depth of containers and objects at most :data:`MAX_DEPTH` (real network pickles nest 30 to 40
  deep); a tuple's depth is exact, since its items are fixed when it is built, so no tuple handed to ``hash``
  is deeper than the bound. Containers grown later through the memo are tracked per object; whatever
  nesting slips past that is caught as a ``RecursionError`` by the readers;
- memo indices at most the number of opcodes read so far (the pickler numbers them 0, 1, 2, ...), and every
  ``GET`` of an index that was ``PUT`` before;
- every length prefix within the stream (``BINBYTES8``, ``BINUNICODE8``, ``LONG4``, ...), no stack underflow,
  no opcode after ``STOP``, at most :data:`MAX_OPCODES` opcodes.

Nothing here allocates more than a small multiple of the stream's own size.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import BinaryIO

MAX_DEPTH = 100
MAX_OPCODES = 50_000_000


class UnsafePickle(pickle.UnpicklingError):
    """The stream is malformed or built to exhaust the reader; raised before anything is unpickled."""


# Opcodes that push one new container or object built from the items they pop.
_BUILDS = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "LIST", "DICT", "FROZENSET", "REDUCE", "NEWOBJ", "NEWOBJ_EX",
           "OBJ", "INST", "STACK_GLOBAL"}
# Opcodes that add the items they pop to the object below them (which stays on the stack).
_GROWS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


class _Node:
    """One simulated stack item: how deeply nested the object it stands for is (0: an atom)."""

    __slots__ = ("depth",)

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth


def _before(op: pickletools.OpcodeInfo) -> tuple[bool, int]:
    """``(pops to the mark, number of single items popped)`` for ``op``."""
    items = op.stack_before
    if pickletools.markobject in items:
        return True, sum(1 for s in items[: items.index(pickletools.markobject)])
    return False, len(items)


def scan(data: bytes | memoryview | BinaryIO, start: int = 0) -> int:
    """Check the pickle that starts at offset ``start`` of ``data`` (bytes, or a seekable binary stream such as
    an open file); return the offset just past its ``STOP``.

    Raises :class:`UnsafePickle` saying what is wrong; never allocates in proportion to a declared size.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(start)
    stack: list[_Node] = []
    marks: list[int] = []
    memo: dict[int, _Node] = {}
    count = 0
    try:
        for op, arg, pos in pickletools.genops(stream):
            count += 1
            if count > MAX_OPCODES:
                raise UnsafePickle(f"more than {MAX_OPCODES:,} opcodes")
            name = op.name
            if name == "STOP":
                if len(stack) != 1 or marks:
                    raise UnsafePickle("the stream ends with a malformed stack")
                return stream.tell()
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name == "FRAME" and int(arg) > size - stream.tell():
                raise UnsafePickle(f"a frame of {arg:,} bytes is longer than the rest of the stream")
            if name == "DUP":
                if not stack:
                    raise UnsafePickle("DUP on an empty stack")
                stack.append(stack[-1])
                continue
            if name in _PUTS or name == "MEMOIZE":
                index = len(memo) if name == "MEMOIZE" else int(arg)
                if not stack:
                    raise UnsafePickle("the memo stores from an empty stack")
                if index < 0 or index > count:
                    raise UnsafePickle(f"memo index {index} is out of range")
                memo[index] = stack[-1]
                continue
            if name in _GETS:
                if int(arg) not in memo:
                    raise UnsafePickle(f"the memo has no entry {arg} (broken memo)")
                stack.append(memo[int(arg)])
                continue
            to_mark, singles = _before(op)
            popped: list[_Node] = []
            if to_mark:
                if not marks:
                    raise UnsafePickle(f"{name} without a MARK")
                mark = marks.pop()
                popped = stack[mark:]
                del stack[mark:]
            if singles > len(stack):
                raise UnsafePickle(f"{name} on a stack of {len(stack)} items")
            if singles:
                popped = stack[len(stack) - singles:] + popped
                del stack[len(stack) - singles:]
            inner = max((n.depth for n in popped), default=-1) + 1
            if name in _GROWS:
                target, added = popped[0], popped[1:]
                target.depth = max(target.depth, max((n.depth for n in added), default=-1) + 1)
                depth = target.depth
                stack.append(target)
            elif name in _BUILDS or name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
                depth = max(inner, 1)
                stack.append(_Node(depth))
            else:  # atoms, globals, persistent ids, POP, DUP, ...
                depth = inner if popped else 0
                stack.extend(_Node(depth) for _ in op.stack_after)
            if depth > MAX_DEPTH:
                raise UnsafePickle(f"objects nested more than {MAX_DEPTH} deep")
    except ValueError as exc:  # genops: unknown opcode, short argument, declared size beyond the data
        raise UnsafePickle(str(exc).split("\n")[0]) from None
    except MemoryError:  # a file object asked to read a declared size beyond any memory (it reads nothing)
        raise UnsafePickle(f"a declared size is larger than the {size:,}-byte stream") from None
    raise UnsafePickle("the stream ends without STOP (truncated)")
