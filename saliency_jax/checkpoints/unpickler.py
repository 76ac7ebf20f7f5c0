"""A restricted pickle machine: plain containers, and calls of allow-listed functions only.

`pickle.Unpickler` lets a file steer it: BUILD runs ``__setstate__`` (or
updates ``__dict__``) on whatever object is on its stack, the memo grows to
the largest index the file names, and dict keys of any nesting are hashed. This
machine reads the opcodes with `pickletools.genops` and rebuilds objects
itself, so none of that is reachable:

* a global resolves only through an allow-list of immutable values (`Function`s
  and the like); anything else raises `UnsafeCheckpointError` before it could
  be reached, let alone run;
* REDUCE / NEWOBJ / INST / OBJ call only `Function`s; BUILD is accepted only on
  the dicts, lists and sets this machine made, and its state is dropped;
* dict keys and set items must be strings, bytes, bools, None or ints below
  2**61 (which hash to themselves), so inserting one costs O(its size);
* opcodes, memo entries and nesting depth are bounded by a `Budget`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import pickletools
import struct
from typing import Any, BinaryIO, Callable, Mapping

from saliency_jax.checkpoints.budget import DEFAULT_BUDGET, Budget
from saliency_jax.checkpoints.errors import (
    CheckpointError,
    UnsafeCheckpointError,
    describe,
    one_line,
)

_SMALL_INT = 2**61 - 1  # ints below this hash to themselves: no crafted hash collisions
_SHOWN_NAME = 60  # characters of a global's module or name in a message
# What a malformed pickle makes the machine or genops raise.
_MALFORMED = (ValueError, TypeError, IndexError, KeyError, EOFError, OverflowError,
              struct.error, UnicodeDecodeError)


def refuse_state(self: Any, state: Any) -> None:
    """``__setstate__`` of the reader's own classes: pickle state is never applied to them."""
    del state
    raise UnsafeCheckpointError(f"refusing to set pickle state on the reader's {type(self).__name__}")


@dataclasses.dataclass(frozen=True, slots=True)
class Function:
    """An allow-listed callable a pickle may name and call; immutable."""

    name: str
    function: Callable[..., Any]
    __setstate__ = refuse_state

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


def safe_key(value: Any) -> Any:
    """`value` if it may be a dict key or set item (cheap to hash, no crafted collisions); else raises."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        return value
    if type(value) is int and -_SMALL_INT < value < _SMALL_INT:
        return value
    raise CheckpointError(
        f"a dict key or set item is {describe(value)}; only strings, bytes and small ints are accepted"
    )


def _items(value: Any, what: str) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise CheckpointError(f"{what} is built from {describe(value)}, not a list or tuple")
    return value


def as_tuple(items: Any = ()) -> tuple:
    """``torch.Size(items)``: a tuple of a list or tuple."""
    return tuple(_items(items, "a tuple"))


def _ordered_dict(pairs: Any = ()) -> collections.OrderedDict:
    out = collections.OrderedDict()
    for pair in _items(pairs, "an OrderedDict"):
        key, value = _items(pair, "an OrderedDict item")
        out[safe_key(key)] = value
    return out


def _set(items: Any = ()) -> set:
    return {safe_key(item) for item in _items(items, "a set")}


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise CheckpointError(f"complex() of {describe(real)} and {describe(imag)}")
    return complex(real, imag)


# The plain containers a pickle may build by name.
CONTAINER_GLOBALS: dict[tuple[str, str], Function] = {
    ("collections", "OrderedDict"): Function("collections.OrderedDict", _ordered_dict),
    ("builtins", "set"): Function("builtins.set", _set),
    ("builtins", "frozenset"): Function("builtins.frozenset", _frozenset),
    ("builtins", "complex"): Function("builtins.complex", _complex),
}


def _shown(text: str) -> str:
    """A module or global name for a message: printable, at most `_SHOWN_NAME` characters."""
    cut = text[:_SHOWN_NAME] + ("..." if len(text) > _SHOWN_NAME else "")
    return cut if cut.isprintable() else repr(cut)[1:-1]


class Unpickler:
    """Reads one pickle with the restricted machine (see the module docstring).

    Args:
      allowed: {(module, name): immutable value} of the globals a pickle may name.
      persistent_load: called with each persistent id; None refuses them.
      budget: the opcode, memo and depth limits.

    Example:
      >>> Unpickler(CONTAINER_GLOBALS).load(io.BytesIO(pickle.dumps({"a": [1]})))
      {'a': [1]}
    """

    def __init__(self, allowed: Mapping[tuple[str, str], Any],
                 persistent_load: Callable[[Any], Any] | None = None, budget: Budget = DEFAULT_BUDGET):
        self.allowed, self.persistent_load, self.budget = allowed, persistent_load, budget
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, Any] = {}
        self.depth: dict[int, int] = {}  # id -> nesting depth of the containers made here
        self.alive: list = []  # keeps those ids valid

    def load(self, file: BinaryIO) -> Any:
        """The object the pickle at `file`'s position builds; the file is left just after its STOP."""
        pos = 0
        try:
            for count, (op, arg, pos) in enumerate(pickletools.genops(file), 1):
                if count > self.budget.max_ops:
                    raise CheckpointError(f"pickle has over {self.budget.max_ops} opcodes")
                if op.name == "STOP":
                    return self.pop()
                handler = _HANDLERS.get(op.name)
                if handler is None:
                    raise CheckpointError(f"pickle opcode {op.name} (byte {pos}) is not supported")
                handler(self, arg)
        except CheckpointError:
            raise
        except _MALFORMED as error:
            raise CheckpointError(f"malformed pickle near byte {pos} ({one_line(error)})") from None
        raise CheckpointError("pickle ended without a STOP opcode")

    # --- the stack, marks and memo ---

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise CheckpointError("pickle pops an empty stack")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise CheckpointError("pickle reads an empty stack")
        return self.stack[-1]

    def mark(self) -> None:
        if len(self.marks) >= self.budget.max_depth:
            raise CheckpointError(f"pickle marks nest deeper than {self.budget.max_depth}")
        self.marks.append(self.stack)
        self.stack = []

    def pop_mark(self) -> list:
        if not self.marks:
            raise CheckpointError("pickle pops a mark it never set")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def put(self, index: int) -> None:
        if index not in self.memo and len(self.memo) >= self.budget.max_memo:
            raise CheckpointError(f"pickle stores over {self.budget.max_memo} memo entries")
        self.memo[index] = self.top()

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise CheckpointError(f"pickle reads memo entry {describe(index)}, which it never stored")
        self.push(self.memo[index])

    # --- containers ---

    def grow(self, container: Any, children: list | tuple) -> None:
        """Records that `children` now sit inside `container`; refuses nesting over `max_depth`."""
        inner = max((self.depth.get(id(c), 0) for c in children), default=0)
        if inner + 1 > self.depth.get(id(container), 1):
            if inner + 1 > self.budget.max_depth:
                raise CheckpointError(f"pickle nests containers deeper than {self.budget.max_depth}")
            self.depth[id(container)] = inner + 1

    def made(self, container: Any, children: list | tuple = ()) -> Any:
        """Registers a container this machine built (from `children`) and pushes it."""
        self.alive.append(container)
        self.depth[id(container)] = 1
        self.grow(container, children)
        self.push(container)
        return container

    def extend(self, items: list) -> None:
        target = self.top()
        if type(target) is not list:
            raise CheckpointError(f"pickle appends to {describe(target)}, not a list")
        self.grow(target, items)
        target.extend(items)

    def set_items(self, items: list) -> None:
        target = self.top()
        if not isinstance(target, dict) or len(items) % 2:
            raise CheckpointError(f"pickle sets {len(items)} items on {describe(target)}")
        self.grow(target, items[1::2])
        for key, value in zip(items[::2], items[1::2]):
            target[safe_key(key)] = value

    def add_items(self, items: list) -> None:
        target = self.top()
        if type(target) is not set:
            raise CheckpointError(f"pickle adds set items to {describe(target)}")
        target.update(map(safe_key, items))

    def build(self) -> None:
        """BUILD: accepted on the plain containers made here (state dropped), refused on anything else."""
        self.pop()
        target = self.top()
        if type(target) not in (dict, collections.OrderedDict, list, set):
            raise UnsafeCheckpointError(
                f"the checkpoint sets pickle state on {describe(target)}; only plain containers take it"
            )

    # --- globals and calls ---

    def find(self, module: Any, name: Any) -> Any:
        """The allow-listed value for `module.name`; UnsafeCheckpointError for anything else."""
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafeCheckpointError(f"the checkpoint names a global by {describe(module)}, {describe(name)}")
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 spellings ('__builtin__')
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) not in self.allowed:
            raise UnsafeCheckpointError(
                f"the checkpoint asks for '{_shown(module)}.{_shown(name)}', "
                "which is not a tensor or a plain container"
            )
        return self.allowed[(module, name)]

    def call(self, function: Any, args: Any) -> None:
        """Pushes `function(*args)` for an allow-listed `Function` and a tuple of arguments."""
        if not isinstance(function, Function):
            raise UnsafeCheckpointError(f"the checkpoint calls {describe(function)}, which is not a function")
        if type(args) is not tuple:
            raise CheckpointError(f"{function.name} is called with {describe(args)}, not a tuple")
        result = function(*args)
        self.alive.append(result)
        self.depth[id(result)] = max(self.depth.get(id(result), 0), self.depth.get(id(args), 0))
        self.push(result)

    def load_persistent(self, pid: Any) -> None:
        if self.persistent_load is None:
            raise CheckpointError("pickle has a persistent id where none is expected")
        self.push(self.persistent_load(pid))


def _global_pair(arg: str) -> tuple[str, str]:
    module, _, name = arg.partition(" ")
    return module, name


def _reduce(m: Unpickler) -> None:
    args = m.pop()
    m.call(m.pop(), args)


def _newobj_ex(m: Unpickler) -> None:
    kwargs, args, cls = m.pop(), m.pop(), m.pop()
    if type(kwargs) is not dict or kwargs:
        raise CheckpointError(f"NEWOBJ_EX with keyword arguments {describe(kwargs)}")
    m.call(cls, args)


def _obj(m: Unpickler) -> None:
    items = m.pop_mark()
    if not items:
        raise CheckpointError("OBJ without a class")
    m.call(items[0], tuple(items[1:]))


def _stack_global(m: Unpickler) -> None:
    name, module = m.pop(), m.pop()
    m.push(m.find(module, name))


def _tuple_of(m: Unpickler, n: int) -> None:
    items = m.stack[-n:] if n and len(m.stack) >= n else None
    if items is None:
        raise CheckpointError(f"pickle builds a {n}-tuple from a shorter stack")
    del m.stack[-n:]
    m.made(tuple(items), items)


_ATOM_OPS = (
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
)
# opcode name -> handler(machine, arg); an opcode missing here is refused.
_HANDLERS: dict[str, Callable[[Unpickler, Any], None]] = {
    **{name: Unpickler.push for name in _ATOM_OPS},
    "NONE": lambda m, _: m.push(None),
    "NEWTRUE": lambda m, _: m.push(True),
    "NEWFALSE": lambda m, _: m.push(False),
    "PROTO": lambda m, _: None,
    "FRAME": lambda m, _: None,
    "MARK": lambda m, _: m.mark(),
    "POP": lambda m, _: m.pop() if m.stack else m.pop_mark(),
    "POP_MARK": lambda m, _: m.pop_mark(),
    "DUP": lambda m, _: m.push(m.top()),
    **{name: Unpickler.put for name in ("PUT", "BINPUT", "LONG_BINPUT")},
    "MEMOIZE": lambda m, _: m.put(len(m.memo)),
    **{name: Unpickler.get for name in ("GET", "BINGET", "LONG_BINGET")},
    "EMPTY_DICT": lambda m, _: m.made({}),
    "EMPTY_LIST": lambda m, _: m.made([]),
    "EMPTY_TUPLE": lambda m, _: m.made(()),
    "EMPTY_SET": lambda m, _: m.made(set()),
    "DICT": lambda m, _: (items := m.pop_mark(), m.made({}), m.set_items(items)),
    "LIST": lambda m, _: (items := m.pop_mark(), m.made(list(items), items)),
    "TUPLE": lambda m, _: (items := m.pop_mark(), m.made(tuple(items), items)),
    "TUPLE1": lambda m, _: _tuple_of(m, 1),
    "TUPLE2": lambda m, _: _tuple_of(m, 2),
    "TUPLE3": lambda m, _: _tuple_of(m, 3),
    "FROZENSET": lambda m, _: m.made(frozenset(map(safe_key, m.pop_mark()))),
    "APPEND": lambda m, _: m.extend([m.pop()]),
    "APPENDS": lambda m, _: m.extend(m.pop_mark()),
    "SETITEM": lambda m, _: (value := m.pop(), key := m.pop(), m.set_items([key, value])),
    "SETITEMS": lambda m, _: m.set_items(m.pop_mark()),
    "ADDITEMS": lambda m, _: m.add_items(m.pop_mark()),
    "BUILD": lambda m, _: m.build(),
    "GLOBAL": lambda m, arg: m.push(m.find(*_global_pair(arg))),
    "STACK_GLOBAL": lambda m, _: _stack_global(m),
    "REDUCE": lambda m, _: _reduce(m),
    "NEWOBJ": lambda m, _: _reduce(m),
    "NEWOBJ_EX": lambda m, _: _newobj_ex(m),
    "INST": lambda m, arg: m.call(m.find(*_global_pair(arg)), tuple(m.pop_mark())),
    "OBJ": lambda m, _: _obj(m),
    "PERSID": lambda m, arg: m.load_persistent(arg),
    "BINPERSID": lambda m, _: m.load_persistent(m.pop()),
}
