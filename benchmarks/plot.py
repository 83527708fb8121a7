"""One PNG per run: raw TF by batch size beside the app, and latency figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_results(results: dict, path: Path) -> None:
    raw, app = results["raw_tf"], results["app"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))

    names = [f"raw b={b}" for b in raw["by_batch"]] + [
        "app 1 client", "app 16 clients", "app 32-img req"]
    values = [v["images_per_s"] for v in raw["by_batch"].values()] + [
        app["one_client"]["images_per_s"], app["sixteen_clients"]["images_per_s"],
        app["batch32_requests"]["images_per_s"]]
    colors = ["#999999"] * len(raw["by_batch"]) + ["#1f77b4"] * 3
    left.bar(names, values, color=colors)
    left.axhline(raw["best_images_per_s"], color="black", linestyle="--", linewidth=1,
                 label="raw TF best")
    left.set_ylabel("images / s")
    left.set_title("Throughput: raw TensorFlow vs this server (MobileNetV2)")
    left.tick_params(axis="x", rotation=45)
    left.legend()

    labels = ["first request", "steady p50", "steady p90", "steady p99"]
    one = app["one_client"]
    lat = [app["first_request_ms"], one["p50_ms"], one["p90_ms"], one["p99_ms"]]
    right.bar(labels, lat, color=["#d62728", "#1f77b4", "#1f77b4", "#1f77b4"])
    right.axhline(raw["batch1_ms"], color="black", linestyle="--", linewidth=1,
                  label="raw TF batch 1")
    right.set_ylabel("ms")
    right.set_title("One client, one image: first request after start vs steady state")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
