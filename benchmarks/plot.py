"""One PNG per run: throughput and latency by concurrency per system, raw TF by
batch size, the GPU stand-in against Ray's floor, plain `serve run` against
the fast path, the batches formed, the handoff by size, the autoscaling
timeline, replica memory, sequences and the pipeline."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _skipped(ax, title: str) -> None:
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured in this run (--skip)", ha="center", va="center",
            color="gray", transform=ax.transAxes)


def _systems(ax_tput, ax_lat, results: dict) -> None:
    if "systems" not in results:
        _skipped(ax_tput, "Throughput by system")
        _skipped(ax_lat, "p99 latency")
        return
    for name, by_clients in results["systems"].items():
        clients = [int(c) for c in by_clients]
        style = "-o" if name.startswith("this server") else "--s"
        ax_tput.plot(clients, [s["images_per_s"] for s in by_clients.values()], style,
                     label=name)
        ax_lat.plot(clients, [s["p99_ms"] for s in by_clients.values()], style, label=name)
    best = results["raw_tf"]["best_images_per_s"]
    ax_tput.axhline(best, color="black", linestyle=":", label="raw TF best batch")
    ax_tput.set(xlabel="concurrent clients (1 image each)", ylabel="images / s",
                title="Throughput by system", xscale="log", xticks=results["levels"])
    ax_tput.set_xticklabels(results["levels"])
    ax_lat.set(xlabel="concurrent clients", ylabel="p99 ms", title="p99 latency",
               xscale="log", yscale="log", xticks=results["levels"])
    ax_lat.set_xticklabels(results["levels"])
    ax_tput.legend(fontsize=6)


def _raw(ax, results: dict) -> None:
    raw = results["raw_tf"]["by_batch"]
    ax.bar([str(b) for b in raw], [v["images_per_s"] for v in raw.values()], color="#999999")
    ax.set(xlabel="batch size", ylabel="images / s", title="Raw TensorFlow in one process")


def _handoff(ax, handoff: list, results: dict) -> None:
    sizes = [h["mb"] for h in handoff]
    ax.loglog(sizes, [h["handoff_ms"] for h in handoff], "-o", label="ray.put + replica call")
    ax.loglog(sizes, [h["copy_ms"] for h in handoff], "--s", label="one np.copy")
    ax.set(xlabel="array MB", ylabel="ms")
    ax.legend(fontsize=7)


def _autoscaling(ax, auto: dict, results: dict) -> None:
    done = np.array(auto["done_at_s"])
    lat = np.array(auto["latencies_ms"])
    end = int(sum(s for _, s in auto["phases"]))
    seconds = np.arange(0, end, 5)
    tput = [((done >= t) & (done < t + 5)).sum() / 5 for t in seconds]
    p99 = [np.percentile(lat[(done >= t) & (done < t + 5)], 99)
           if ((done >= t) & (done < t + 5)).any() else np.nan for t in seconds]
    ax.plot(seconds, tput, "-", label="images / s")
    ax.plot(seconds, np.array(p99) / 10, ":", label="p99 ms / 10")
    twin = ax.twinx()
    twin.step([t for t, _ in auto["replicas"]], [n for _, n in auto["replicas"]], "r-",
              where="post", label="replicas")
    twin.set_ylabel("replicas", color="red")
    twin.set_ylim(0, max(3, max((n for _, n in auto["replicas"]), default=1) + 1))
    ax.set(xlabel="seconds (1 → 16 → 1 clients)")
    ax.legend(fontsize=7, loc="upper left")


def _memory(ax, memory: dict, results: dict) -> None:
    requests = [s["requests"] for s in memory["samples"]]
    for pid in memory["pids"]:
        ax.plot(requests, [s["rss_mb"][str(pid)] for s in memory["samples"]], "-o",
                label=f"replica {pid} RSS")
    ax.plot(requests, [s["object_store_mb"] for s in memory["samples"]], "--",
            label="object store used")
    ax.set(xlabel="requests", ylabel="MB")
    ax.legend(fontsize=7)


def _standin(ax, standin: dict, results: dict) -> None:
    runs = standin["runs"]
    labels = [f"{r['protocol']}\n{r['clients']}c {r['ingress_replicas']}i "
              f"{'on' if r['coalesce'] else 'off'}" for r in runs]
    colors = ["#1f77b4" if r["coalesce"] else "#aec7e8" for r in runs]
    ax.bar(range(len(runs)), [r["images_per_s"] for r in runs], color=colors)
    ax.set_xticks(range(len(runs)), labels, fontsize=5)
    floor = max(s["images_per_s"] for s in standin["floor"].values())
    ax.axhline(floor, color="red", linestyle=":", label="Ray's floor (2 trivial deployments)")
    ax.axhline(standin["decode_rate"]["images_per_s"] / 2, color="black", linestyle="--",
               label="half the in-process decode rate")
    ax.set(ylabel="images / s", yscale="log")
    ax.legend(fontsize=6)


def _plain(ax, plain: dict, results: dict) -> None:
    fast = results.get("systems", {})
    clients = str(plain["clients"])
    bars = {"this server\nplain": plain["this server"]["images_per_s"],
            "peer\nplain": plain["hand-built peer"]["images_per_s"]}
    for name, short in (("this server: native image", "this server\nfast"),
                        ("hand-built @serve.batch (raw float32)", "peer\nfast")):
        if clients in fast.get(name, {}):
            bars[short] = fast[name][clients]["images_per_s"]
    ax.bar(list(bars), list(bars.values()), color=["#aec7e8", "#ffbb78", "#1f77b4",
                                                   "#ff7f0e"][:len(bars)])
    ax.set(ylabel="images / s", xlabel=f"{clients} clients")


def _batches(ax, app: dict, results: dict) -> None:
    model = app["model_stats"]["batch_rows"]
    calls: dict[str, int] = {}
    for versions in app["ingress_stats"]["models"].values():
        for counts in versions["versions"].values():
            for rows, n in counts["rows_per_call"].items():
                calls[str(rows)] = calls.get(str(rows), 0) + n
    sizes = sorted({*map(int, model), *map(int, calls)})
    x = np.arange(len(sizes))
    ax.bar(x - 0.2, [calls.get(str(s), 0) for s in sizes], 0.4,
           label="rows per model call (ingress)")
    ax.bar(x + 0.2, [model.get(str(s), model.get(s, 0)) for s in sizes], 0.4,
           label="rows per TensorFlow call (one replica)")
    ax.set_xticks(x, [str(s) for s in sizes])
    ax.set(xlabel="rows", ylabel="count")
    ax.legend(fontsize=7)


def _sequence(ax, seq: dict, results: dict) -> None:
    bars = {"served,\n16 clients": seq["served_16_clients"]["images_per_s"],
            **{f"raw TF,\n{name.replace(', ', chr(10))}": rate
               for name, rate in seq["raw_rows_per_s"].items()}}
    ax.bar(list(bars), list(bars.values()),
           color=["#1f77b4", *["#7f7f7f"] * (len(bars) - 1)])
    ax.tick_params(axis="x", labelsize=6)
    ax.set(ylabel="rows / s", xlabel=f"lengths {seq['lengths']}, one row per request")


def _pipeline(ax, pipe: dict, results: dict) -> None:
    bars, colors = {}, []
    for protocol, by_clients in pipe["served"].items():
        for clients, s in by_clients.items():
            bars[f"{protocol.split()[-1]}\n{clients} clients"] = s["images_per_s"]
            colors.append("#1f77b4" if protocol.startswith("TF") else "#ff7f0e")
    for batch, r in pipe["in_process"].items():
        bars[f"in process\nbatch {batch}"] = r["canvases_per_s"]
        colors.append("#7f7f7f")
    ax.bar(list(bars), list(bars.values()), color=colors)
    ax.tick_params(axis="x", labelsize=6)
    ax.set(ylabel="canvases / s", yscale="log",
           xlabel="served (TF Serving JSON, V2 binary) vs the stages in process")


# A call's time by step and part; a stage in process takes the colour of the
# part it matches (the crop runs in the read step's feed).
SEGMENTS = {("locate", "feed"): ("locate: feed", "#aec7e8"),
            ("locate", "model"): ("locate: model", "#1f77b4"),
            ("read", "feed"): ("read: feed (crop)", "#ffbb78"),
            ("read", "model"): ("read: model", "#ff7f0e")}
IN_PROCESS = {"locate": ("locate", "model"), "crop": ("read", "feed"),
              "read": ("read", "model")}


def _pipeline_steps(ax, pipe: dict, results: dict) -> None:
    rows: dict[str, dict[tuple[str, str], float]] = {}
    for protocol, by_clients in pipe["served"].items():
        for clients, s in by_clients.items():
            batching = " / ".join(f"{c['requests_per_call']:.1f}" for c in s["steps"].values())
            rows[f"{protocol.split()[-1]}, {clients} clients\n({batching} requests/call)"] = {
                (step, part): c[f"{part}_ms_per_call"]
                for step, c in s["steps"].items() for part in ("feed", "model")}
    for batch, r in pipe["in_process"].items():
        rows[f"in process, batch {batch}"] = {IN_PROCESS[k]: v
                                              for k, v in r["ms_per_batch"].items()}
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for segment, (label, color) in SEGMENTS.items():
        widths = np.array([row.get(segment, 0.0) for row in rows.values()])
        ax.barh(y, widths, left=left, color=color, label=label)
        left += widths
    ax.set_yticks(y, list(rows), fontsize=6)
    ax.invert_yaxis()
    ax.set(xlabel="ms per step call (served, on the replicas) or per batch (in process)")
    ax.legend(fontsize=6)


# The panels after the first row: the results' section each draws, its title.
PANELS = [
    ("standin", "GPU stand-in (clients c, ingress replicas i, coalescing on/off)", _standin),
    ("plain", "Plain `serve run` vs server.env", _plain),
    ("app", "Batches formed", _batches),
    ("handoff", "Handoff through the object store", _handoff),
    ("autoscaling", "Autoscaling under a step load", _autoscaling),
    ("memory", "Memory over a long run", _memory),
    ("sequence", "Sequences of mixed lengths vs raw TF on the mix", _sequence),
    ("pipeline", "Pipeline (locator → crop → digits) vs its stages in process", _pipeline),
    ("pipeline", "Pipeline: where a call's time goes", _pipeline_steps),
]


def plot_results(results: dict, path: Path) -> None:
    fig, axes = plt.subplots(4, 3, figsize=(18, 17))
    _systems(axes[0][0], axes[0][1], results)
    _raw(axes[0][2], results)
    panels = iter(axes[1:].flat)
    # (PANELS first: zip stops on it without taking another cell.)
    for (key, title, draw), ax in zip(PANELS, panels, strict=False):
        if results.get(key):
            draw(ax, results[key], results)
            ax.set_title(title)
        else:
            _skipped(ax, title)
    for ax in panels:  # the grid's cells left over
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
