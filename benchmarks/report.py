"""The ratios a run is judged by, and the summary printed at its end."""

from __future__ import annotations

import numpy as np

OURS = "this server: native image"


def _at(system: dict, clients: int) -> float:
    return system.get(str(clients), {}).get("images_per_s", float("nan"))


def scale_times(autoscaling: dict) -> dict:
    """Seconds from each load step to the replica count's change (None: never)."""
    (_, low), (_, high), _ = autoscaling["phases"]
    step_up, step_down = low, low + high
    samples = autoscaling["replicas"]
    start = samples[0][1] if samples else 0
    up = next((t for t, n in samples if t >= step_up and n > start), None)
    down = next((t for t, n in samples if t >= step_down and n <= start), None)
    return {"scale_up_s": None if up is None else up - step_up,
            "scale_down_s": None if down is None else down - step_down,
            "max_replicas": max((n for _, n in samples), default=0),
            "failed_requests": sum(autoscaling["errors"].values())}


def rss_growth(memory: dict) -> float:
    """The largest relative RSS change of any replica from the first sample."""
    first, last = memory["samples"][0]["rss_mb"], memory["samples"][-1]["rss_mb"]
    return max((last[p] - first[p]) / first[p] for p in first)


def ratios(results: dict) -> dict:
    """Every target's figure the run has the sections for."""
    out: dict = {}
    if OURS in results.get("systems", {}):
        out.update(_throughput_ratios(results))
    if "handoff" in results:
        at_100 = next(h for h in results["handoff"] if h["mb"] == 100)
        out["handoff_100mb_vs_copy"] = at_100["handoff_vs_copy"]
        out["handoff_receiver_zero_copy"] = all(
            h["receiver"]["in_object_store"] and not h["receiver"]["writeable"]
            for h in results["handoff"])
    if "memory" in results:
        out["replica_rss_growth"] = rss_growth(results["memory"])
    if "autoscaling" in results:
        out.update(scale_times(results["autoscaling"]))
    return out


def _throughput_ratios(results: dict) -> dict:
    raw, systems, app = results["raw_tf"], results["systems"], results["app"]
    best = raw["best_images_per_s"]
    many = 16 if "16" in systems[OURS] else max(int(c) for c in systems[OURS])
    ours = _at(systems[OURS], many)
    out = {
        f"native_{many}_clients_vs_raw_best": ours / best,
        "batch32_requests_vs_raw_best": app["batch32_requests"]["images_per_s"] / best,
        f"handle_{many}_clients_vs_raw_best":
            _at(systems["this server: Python handle"], many) / best,
        f"model_handle_{many}_clients_vs_raw_best":
            _at(systems.get("this server: model handle", {}), many) / best,
        f"native_vs_naive_{many}_clients": ours / _at(systems["naive Ray Serve (JSON)"], many),
        "p50_one_client_minus_raw_batch1_ms":
            systems[OURS]["1"]["p50_ms"] - raw["batch1_ms"],
        "first_request_vs_steady_p50": app["first_request_ms"] / systems[OURS]["1"]["p50_ms"],
    }
    kserve = [_at(s, many) for name, s in systems.items() if name.startswith("KServe")]
    if kserve:
        out[f"native_vs_best_kserve_{many}_clients"] = ours / max(kserve)
    return out


def report(results: dict) -> None:
    raw = results["raw_tf"]
    low, high = raw["best_images_per_s_spread"]
    print(f"\nraw TF: batch 1 {raw['batch1_ms']:.1f} ms; best batch {raw['best_batch']}: "
          f"{raw['best_images_per_s']:.1f} img/s (before/after: {low:.1f}-{high:.1f})")
    for name, by_clients in results.get("systems", {}).items():
        cells = "  ".join(f"{c}: {s['images_per_s']:6.1f} img/s p50 {s['p50_ms']:6.1f} ms"
                          for c, s in by_clients.items())
        print(f"{name:>36}  {cells}")
    if "app" in results:
        b32 = results["app"]["batch32_requests"]
        print(f"{'32-image requests, 2 clients':>36}  {b32['images_per_s']:.1f} img/s")
        print(f"batches formed (rows: count) {results['app']['model_stats']['batch_rows']}")
    for h in results.get("handoff", []):
        print(f"handoff {h['mb']:4d} MB: {h['handoff_ms']:7.1f} ms vs np.copy "
              f"{h['copy_ms']:7.1f} ms ({h['handoff_vs_copy']:.2f}x)")
    for name, value in results["ratios"].items():
        shown = f"{value:.2f}" if isinstance(value, float) and np.isfinite(value) else value
        print(f"  {name}: {shown}")
