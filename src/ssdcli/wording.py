"""Small helpers for the words of messages, so counts read right ("1 class", "2 classes")."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun`` in the right number: ``plural(1, "class")`` -> ``"1 class"``,
    ``plural(2, "class")`` -> ``"2 classes"``; ``many`` for irregular plurals."""
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        many = noun + ("es" if noun.endswith(("s", "sh", "ch", "x", "z")) else "s")
    return f"{count} {many}"
