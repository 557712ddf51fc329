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
    info["descriptor_sets"] = descriptor_sets(store)
    return info


def descriptor_sets(store: Store) -> list[dict]:
    """Per descriptor set: settings, rows per class and how many blocks are done."""
    from oamlm_dist.describe import STAGE, DescriptorSpec, class_row_counts, plan_blocks

    sets = []
    for name in sorted(store.group("classes").group_keys()):
        attrs = dict(store.root[f"classes/{name}"].attrs)
        if "spec" not in attrs:
            continue
        spec = DescriptorSpec.from_dict(attrs["spec"])
        planned = plan_blocks(store, spec.block_frames)
        sets.append({"name": name, "spec": spec.to_dict(),
                     "rows": class_row_counts(store, name),
                     "blocks_done": len(store.done_keys(f"{STAGE}/{name}")),
                     "blocks_planned": len(planned)})
    return sets


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
    for dset in info["descriptor_sets"]:
        soap = dset["spec"]["soap"]
        lines.append(
            f"classes   {dset['name']}: scheme {dset['spec']['scheme']}, "
            f"SOAP r_cut={soap['r_cut']} n_max={soap['n_max']} l_max={soap['l_max']} "
            f"sigma={soap['sigma']}, "
            f"{dset['blocks_done']}/{dset['blocks_planned']} blocks done")
        for cls, n in dset["rows"].items():
            lines.append(f"  {cls:<8}{n:>9} rows")
    return "\n".join(lines)
