"""Plots bench/soak.sh's samples: RSS, open descriptors, tokio tasks, p99, CPU per request and
the memory store's entries over time, one line per mode, the end of the warm-up marked.

usage: soak_plot.py --warmup SECONDS --out FILE.png MODE=FILE.csv...
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt  # noqa: E402


def column(rows, name, scale=1.0):
    return [float(r[name]) * scale if r[name] else float("nan") for r in rows]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("series", nargs="+", help="MODE=FILE.csv")
    args = parser.parse_args()

    panels = [
        ("gateway RSS (MiB)", "rss_kib", 1 / 1024),
        ("open file descriptors", "fds", 1.0),
        ("tokio tasks alive", "tasks", 1.0),
        ("p99 latency of each sampling interval (ms)", "p99_ms", 1.0),
        ("gateway CPU per request (us)", "cpu_us_per_request", 1.0),
        ("uploads in the memory store (Redis mode: none)", "store_entries", 1.0),
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 14), sharex=True)
    for series in args.series:
        mode, path = series.split("=", 1)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        t = column(rows, "elapsed_s")
        for axis, (title, name, scale) in zip(axes, panels):
            axis.plot(t, column(rows, name, scale), marker=".", label=mode)
    for axis, (title, _, _) in zip(axes, panels):
        axis.set_title(title, fontsize=10)
        axis.axvline(args.warmup, color="grey", linestyle="--", linewidth=0.8)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[-1].set_xlabel("seconds (dashed: end of warm-up)")
    figure.suptitle("kizen-gateway soak", fontsize=12)
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)


if __name__ == "__main__":
    main()
