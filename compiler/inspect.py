"""Human-readable story of an artifact's manifest (what `squeezeedge inspect` prints)."""

from __future__ import annotations

import json

from squeezeedge.artifact import Artifact


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def describe(art: Artifact) -> str:
    m = art.manifest
    lines = [f"{art.path}: '{m['stage']}' artifact (schema {m['schema_version']}), created {m.get('created')}",
             f"  sha256      {m['artifact_sha256']}"]
    parent = m.get("parent")
    lines.append(f"  parent      {parent['stage']} {parent['path']} ({parent['sha256'][:12]})" if parent
                 else "  parent      none (first stage)")
    lines.append(f"  took        {m.get('wall_time_s')} s, peak RSS {m.get('peak_rss_mb')} MB")
    lines.append("  versions    " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v))
    lines.append("  config")
    lines += [f"    {k:<28} {json.dumps(v, default=str)}" for k, v in _flat(m.get("config", {}))
              if k != "checkpoint_files"]
    lines.append("  results")
    lines += [f"    {k:<28} {json.dumps(v, default=str)[:100]}" for k, v in _flat(m.get("results", {}))
              if not k.startswith("model_config.")]
    lines.append("  files (sha256 verified)")
    for name, digest in m["files"].items():
        size = (art.path / name).stat().st_size
        lines.append(f"    {name:<28} {size:>12,} B  {digest[:16]}")
    return "\n".join(lines)
