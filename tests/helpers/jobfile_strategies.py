"""Hypothesis building blocks for job-file fuzzing, shared by the unit tier and the fault campaign."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st


def containers(node: Any, out: list[Any] | None = None) -> list[Any]:
    """Every mapping and list inside ``node`` (``node`` included): the places a mutation can hit."""
    out = [] if out is None else out
    out.append(node)
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        if isinstance(child, dict | list):
            containers(child, out)
    return out


def mutate(draw: st.DrawFn, base: dict[str, Any], keys: list[str], values: st.SearchStrategy[Any],
           rounds: st.SearchStrategy[int]) -> dict[str, Any]:  # fmt: skip
    """A deep copy of ``base`` after a few random edits: set, delete or add a key or list item."""
    doc = copy.deepcopy(base)
    for _ in range(draw(rounds)):
        target = draw(st.sampled_from(containers(doc)))
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if isinstance(target, dict):
            key = draw(st.sampled_from(sorted(target) or keys)) if action != "add" else draw(st.sampled_from(keys))
            if action == "delete":
                target.pop(key, None)
            else:
                target[key] = draw(values)
        elif isinstance(target, list):
            if action == "delete" and target:
                target.pop(draw(st.integers(0, len(target) - 1)))
            elif action == "set" and target:
                target[draw(st.integers(0, len(target) - 1))] = draw(values)
            else:
                target.append(draw(values))
    return doc
