"""Renders the panels of connmon.json to a PNG with matplotlib.

Grafana is not packaged for Debian, so the README's screenshot is not a Grafana
screenshot: this script runs every panel's own PromQL (from connmon.json, with
$__rate_interval = 1m and $instance = .*) against a real Prometheus that scrapes
`connmon run --metrics`, and draws the results in the dashboard's layout.

    python3 render.py --prometheus http://127.0.0.1:9090 --minutes 10 --out connmon.png

Needs matplotlib (pip install matplotlib); nothing else outside the standard library.
"""

import argparse
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def query(base: str, path: str, **params) -> list:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]["result"]


def expand(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace('=~"$instance"', '=~".*"')


def legend(fmt: str, metric: dict) -> str:
    out = fmt
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default=str(Path(__file__).with_name("connmon.json")))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--out", default="connmon.png")
    args = ap.parse_args()

    dash = json.loads(Path(args.dashboard).read_text())
    end = time.time()
    start = end - args.minutes * 60
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.4), dpi=80)
    fig.suptitle("connmon — deploy/grafana/connmon.json panels (rendered with matplotlib)", fontsize=12, y=0.995)
    grid = fig.add_gridspec(rows, 24, hspace=0.3, wspace=2, top=0.96, bottom=0.02)
    for panel in panels:
        g = panel["gridPos"]
        # The last grid row of each panel is the gap for the next panel's title.
        ax = fig.add_subplot(grid[g["y"] : g["y"] + g["h"] - 2, g["x"] : g["x"] + g["w"]])
        ax.set_title(panel["title"], fontsize=10, loc="left")
        if panel["type"] == "table":
            ax.axis("off")
            lines = []
            for target in panel["targets"]:
                for series in query(args.prometheus, "/api/v1/query", query=expand(target["expr"]), time=end):
                    lines.append(legend(target["legendFormat"], series["metric"]))
            ax.text(0, 1, "\n".join(sorted(lines)[:8]) or "(none)", va="top", family="monospace", fontsize=9)
            continue
        drawn = 0
        for target in panel["targets"]:
            result = query(
                args.prometheus,
                "/api/v1/query_range",
                query=expand(target["expr"]),
                start=start,
                end=end,
                step=5,
            )
            for series in result:
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1, label=legend(target["legendFormat"], series["metric"]))
                drawn += 1
        ax.tick_params(labelsize=8)
        ax.set_xlabel("minutes", fontsize=8)
        ax.grid(alpha=0.3)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if unit:
            ax.set_ylabel({"cps": "per second", "s": "seconds"}.get(unit, ""), fontsize=8)
        if drawn:
            handles, labels = ax.get_legend_handles_labels()
            # topk() over a range names more series than it shows at any one time.
            ax.legend(handles[:8], labels[:8], fontsize=7, loc="upper left", ncol=2)
    fig.savefig(args.out, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
