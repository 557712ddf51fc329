"""What a store holds: frames, descriptor sets, classes, models and stage completeness."""

from __future__ import annotations

import os

from oamlm_dist.store import Store


def store_info(path: str | os.PathLike) -> dict:
    """A JSON-able summary of the store at ``path`` (opened read-only)."""
    store = Store.open(path, mode="r")
    info = store.summary()
    info["segments_detail"] = [
        {"id": s.id, "kind": s.attrs["kind"], "frames": s.n_frames,
         "complete": bool(s.attrs.get("complete")),
         "source": s.attrs.get("source", {}).get("path") or s.attrs.get("name")}
        for s in store.segments()
    ]
    return info


def format_info(info: dict) -> str:
    """Human-readable lines for :func:`store_info`."""
    lines = [
        f"store     {info['path']} (layout {info['layout_version']}, created {info['created']})",
        f"frames    {info['frames']} in {info['segments']} segments, {info['atoms']} atoms, "
        f"elements {' '.join(info['elements']) or '-'}",
    ]
    for kind, count in sorted(info["frames_by_kind"].items()):
        lines.append(f"  {kind:<8}{count} frames")
    for seg in info["segments_detail"]:
        state = "complete" if seg["complete"] else "partial"
        lines.append(f"  segment {seg['id']:>4}  {seg['kind']:<7} {seg['frames']:>7} frames  "
                     f"{state:<8} {seg['source'] or ''}")
    return "\n".join(lines)
