"""Walks over a Gluon block tree."""

__all__ = ["iter_blocks", "named_blocks", "replace_child"]


def named_blocks(block, path=""):
    """Yields ``(attribute path, block)`` for ``block`` and every descendant, depth first, each
    block once even where it is registered as a child twice (the first path wins)."""
    seen = set()

    def walk(current, current_path):
        if id(current) in seen:
            return
        seen.add(id(current))
        yield current_path, current
        for name, child in current._children.items():
            yield from walk(child, f"{current_path}.{name}" if current_path else name)

    yield from walk(block, path)


def iter_blocks(block):
    """Yields ``block`` and every descendant once, depth first."""
    for _, each in named_blocks(block):
        yield each


def replace_child(parent, key, new):
    """Puts ``new`` in place of ``parent``'s child registered as ``key``, both in the child
    registry and in every attribute of ``parent`` that held the old child."""
    old = parent._children[key]
    parent._children[key] = new
    for attr, value in list(vars(parent).items()):
        if value is old:
            object.__setattr__(parent, attr, new)
