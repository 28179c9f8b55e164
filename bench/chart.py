"""The bench run as a chart: seconds and peak RSS per route at the first size (the pipeline's upsert among
them), and the pipeline against raw \\copy at every size, from the JSON `python -m devstack.bench --chart`
writes.

    python bench/chart.py bench/results.json bench/results.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(figures: str, out: str) -> None:
    with open(figures) as source:
        results = json.load(source)
    first = results[0]
    routes = {"raw psql \\copy": (first["raw_seconds"], first["raw_rss"])}
    routes["pipeline (this project)"] = (first["pipeline_seconds"], first["pipeline_rss"])
    colors = ["#888888", "#1f77b4"]
    if "upsert_seconds" in first:
        routes["pipeline, upsert over loaded rows"] = (first["upsert_seconds"], first["upsert_rss"])
        colors.append("#6baed6")
    for name, peer in first.get("peers", {}).items():
        if not peer["mismatch"]:
            routes[name] = (peer["seconds"], peer["rss"])
    names = list(routes)
    colors += ["#ff7f0e"] * (len(names) - len(colors))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2), sharey=True)
    seconds = [routes[n][0] for n in names]
    left.barh(names, seconds, color=colors)
    left.set_xlabel("seconds (median)")
    left.set_title(f"time to load {first['rows']:,} rows ({first['mb']:.0f} MB CSV)")
    for y, s in enumerate(seconds):
        left.text(s, y, f" {s:.2f}s ({s / first['raw_seconds']:.2f}x)", va="center")
    rss = [routes[n][1] for n in names]
    right.barh(names, rss, color=colors)
    right.set_xlabel("peak RSS, MB")
    right.set_title("memory")
    for y, m in enumerate(rss):
        right.text(m, y, f" {m:.0f} MB", va="center")
    left.invert_yaxis()
    left.set_xlim(0, max(seconds) * 1.35)
    right.set_xlim(0, max(rss) * 1.25)
    if len(results) > 1:
        sizes = ", ".join(
            f"{r['rows']:,}: {r['pipeline_seconds']:.1f}s vs raw {r['raw_seconds']:.1f}s "
            f"({r['pipeline_seconds'] / r['raw_seconds']:.2f}x, {r['pipeline_rss']:.0f} MB)"
            for r in results
        )
        fig.suptitle(f"pipeline by size: {sizes}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
