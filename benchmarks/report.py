"""The ratios a run is judged by, and the summary printed at its end."""

from __future__ import annotations

import numpy as np

OURS = "this server: native image"
PEER = "hand-built @serve.batch (raw float32)"
HANDLE = "this server: Python handle"
DIRECT = "this server: model handle, coalesced by the caller"
RAW = "raw TF, best batch"


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


def standin_rate(standin: dict, protocol: str, clients: int, replicas: int,
                 coalesce: bool) -> float:
    return next((r["images_per_s"] for r in standin["runs"]
                 if (r["protocol"], r["clients"], r["ingress_replicas"], r["coalesce"])
                 == (protocol, clients, replicas, coalesce)), float("nan"))


def _standin_ratios(standin: dict) -> dict:
    out: dict = {}
    decode = standin["decode_rate"]["images_per_s"]
    for protocol in ("JPEG", "V2 binary"):
        key = protocol.lower().replace(" ", "_")
        for clients in (16, 64):
            best_on = max(standin_rate(standin, protocol, clients, n, True) for n in (1, 2))
            best_off = max(standin_rate(standin, protocol, clients, n, False) for n in (1, 2))
            out[f"standin_{key}_{clients}_clients_coalescing_on_vs_off"] = best_on / best_off
            if protocol == "JPEG":
                out[f"standin_jpeg_{clients}_clients_vs_decode_rate"] = best_on / decode
    if standin.get("healthz"):  # the same path's bare rate, 1 ingress replica
        healthz = standin["healthz"]["1"]
        clients = healthz["clients"]
        out[f"standin_jpeg_{clients}_clients_vs_healthz"] = max(
            standin_rate(standin, "JPEG", clients, n, True) for n in (1, 2)
        ) / healthz["requests_per_s"]
    floor = max(s["images_per_s"] for s in standin["floor"].values())
    out["standin_best_vs_ray_floor"] = max(r["images_per_s"] for r in standin["runs"]) / floor
    return out


def _pipeline_ratios(pipe: dict) -> dict:
    """Served (the best protocol) against in process; one client's latency
    against the two models served alone (a client chaining them itself, less
    its own crop); the part of it outside the steps' replicas; and the
    hand-off, what the read step adds beyond its own time on its replica
    (the pipeline's latency less the locator's alone and the read step's)."""
    served, stages = pipe["served"]["TF Serving JSON"], pipe["in_process"]
    alone = pipe["stages_alone_1_client"]
    one = served["1"]
    read = one["steps"]["read"]
    out = {
        "pipeline_best_vs_in_process_best":
            max(s["images_per_s"] for runs in pipe["served"].values() for s in runs.values())
            / max(r["canvases_per_s"] for r in stages.values()),
        "pipeline_1_client_vs_in_process_batch_1":
            one["images_per_s"] / stages["1"]["canvases_per_s"],
        "pipeline_1_client_p50_vs_stages_alone_sum":
            one["p50_ms"] / (alone["locator"]["p50_ms"] + alone["digits"]["p50_ms"]),
        "pipeline_1_client_p50_outside_steps_ms": one["p50_ms"] - sum(
            s["feed_ms_per_call"] + s["model_ms_per_call"] for s in one["steps"].values()),
        "pipeline_1_client_handoff_ms": one["p50_ms"] - alone["locator"]["p50_ms"]
            - read["feed_ms_per_call"] - read["model_ms_per_call"],
    }
    for clients, binary in pipe["served"].get("V2 binary", {}).items():
        out[f"pipeline_{clients}_clients_v2_binary_vs_json"] = (
            binary["images_per_s"] / served[clients]["images_per_s"])
    return out


def ratios(results: dict) -> dict:
    """Every target's figure the run has the sections for."""
    out: dict = {}
    if OURS in results.get("systems", {}):
        out.update(_throughput_ratios(results))
    if "standin" in results:
        out.update(_standin_ratios(results["standin"]))
    if "sequence" in results:
        seq = results["sequence"]
        served = seq["served_16_clients"]["images_per_s"]
        raw = seq["raw_rows_per_s"]
        grouped = next(v for k, v in raw.items() if "one length" in k)
        padded = next(v for k, v in raw.items() if "padded" in k)
        out["sequence_16_clients_vs_raw_by_length"] = served / grouped
        out["sequence_16_clients_vs_raw_padded"] = served / padded
        out["sequence_raw_padding_cost"] = grouped / padded
    if "pipeline" in results:
        out.update(_pipeline_ratios(results["pipeline"]))
    if "plain" in results:
        plain = results["plain"]
        fast = results.get("systems", {}).get(OURS, {})
        out["plain_serve_run_vs_fast_path"] = (plain["this server"]["images_per_s"]
                                               / _at(fast, plain["clients"]))
        out["plain_serve_run_vs_plain_peer"] = (plain["this server"]["images_per_s"]
                                                / plain["hand-built peer"]["images_per_s"])
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
        f"native_{many}_clients_vs_hand_built_peer": ours / _at(systems[PEER], many),
        "batch32_requests_vs_raw_best": app["batch32_requests"]["images_per_s"] / best,
        f"handle_{many}_clients_vs_raw_best": _at(systems[HANDLE], many) / best,
        f"handle_by_ref_{many}_clients_vs_raw_best":
            _at(systems.get(f"{HANDLE}, ObjectRef by name", {}), many) / best,
        f"model_handle_{many}_clients_vs_raw_best":
            _at(systems.get("this server: model handle", {}), many) / best,
        f"model_handle_coalesced_by_the_caller_{many}_clients_vs_raw_best":
            _at(systems.get(DIRECT, {}), many) / best,
        f"native_vs_naive_{many}_clients": ours / _at(systems["naive Ray Serve (JSON)"], many),
        "p50_one_client_minus_raw_batch1_ms":
            systems[OURS]["1"]["p50_ms"] - raw["batch1_ms"],
        "first_request_vs_steady_p50": app["first_request_ms"] / systems[OURS]["1"]["p50_ms"],
    }
    if "interleaved" in app:  # raw, peer, ours, handle, raw, peer, ...
        rates = {name: float(np.mean(r)) for name, r in app["interleaved"].items()}
        out["native_vs_hand_built_peer_interleaved"] = rates[OURS] / rates[PEER]
        if RAW in rates:
            clients = app["interleaved_clients"]
            out[f"native_{clients}_clients_vs_raw_best_interleaved"] = rates[OURS] / rates[RAW]
            out[f"handle_{clients}_clients_vs_raw_best_interleaved"] = rates[HANDLE] / rates[RAW]
            if DIRECT in rates:
                out[f"model_handle_coalesced_by_the_caller_{clients}_clients_vs_raw_best"
                    "_interleaved"] = rates[DIRECT] / rates[RAW]
    if "interleaved_one_client_ms" in app:  # raw batch 1 ms per call, our p50
        ms = {name: float(np.mean(v)) for name, v in app["interleaved_one_client_ms"].items()}
        out["p50_one_client_minus_raw_batch1_ms_interleaved"] = ms[OURS] - ms[RAW]
    off = systems.get(f"{OURS}, coalescing off", {})
    if off:
        clients = int(next(iter(off)))
        out[f"native_{clients}_clients_coalescing_on_vs_off"] = (
            _at(systems[OURS], clients) / _at(off, clients))
    kserve = [_at(s, many) for name, s in systems.items() if name.startswith("KServe")]
    if kserve:
        out[f"native_vs_best_kserve_{many}_clients"] = ours / max(kserve)
    return out


def _pipeline_report(pipe: dict) -> None:
    """Each run with its steps' accounting, the stages in process, each model alone."""
    print("pipeline digit_reader (locator → crop → digits), one canvas a request:")
    for protocol, by_clients in pipe["served"].items():
        for clients, s in by_clients.items():
            print(f"  {protocol}, {clients:>2} clients: {s['images_per_s']:6.1f} canvases/s "
                  f"p50 {s['p50_ms']:6.1f} ms, errors {s['errors'] or 0}")
            for step, c in s["steps"].items():
                print(f"    {step:>6}: {c['requests_per_call']:4.1f} requests/call, feed "
                      f"{c['feed_ms_per_call']:5.1f} ms, model {c['model_ms_per_call']:5.1f} "
                      f"ms per call; rows per TF call {c['batch_rows']}")
    for batch, r in pipe["in_process"].items():
        split = ", ".join(f"{k} {v:.1f}" for k, v in r["ms_per_batch"].items())
        print(f"  in process, batch {batch:>2}: {r['canvases_per_s']:7.1f} canvases/s "
              f"(ms per batch: {split})")
    alone = ", ".join(f"{m} {s['p50_ms']:.1f} ms"
                      for m, s in pipe["stages_alone_1_client"].items())
    print(f"  each model alone, 1 client, p50: {alone}")


def _profile_report(profile: dict) -> None:
    """CPU ms per request by process and, in the ingress and the replica, by stage."""
    for run in profile["runs"]:
        processes = "  ".join(f"{k} {v:.2f}" for k, v in run["cpu_ms_per_request"].items())
        print(f"profile, {run['clients']} clients ({run['requests_per_s']:.0f} req/s), "
              f"CPU ms per request: {processes}")
        for role, stages in run["stages_cpu_ms_per_request"].items():
            cells = "  ".join(f"{k} {v:.2f}" for k, v in stages.items())
            print(f"  {role}: {cells}")
    print(f"flame graphs: {profile['flame_graphs']}")


def report(results: dict) -> None:
    raw = results["raw_tf"]
    low, high = raw["best_images_per_s_spread"]
    print(f"\nraw TF: batch 1 {raw['batch1_ms']:.1f} ms; best batch {raw['best_batch']}: "
          f"{raw['best_images_per_s']:.1f} img/s (before/after: {low:.1f}-{high:.1f})")
    for name, by_clients in results.get("systems", {}).items():
        cells = "  ".join(f"{c}: {s['images_per_s']:6.1f} img/s p50 {s['p50_ms']:6.1f} ms"
                          for c, s in by_clients.items())
        print(f"{name:>44}  {cells}")
    if "app" in results:
        b32 = results["app"]["batch32_requests"]
        print(f"{'32-image requests, 2 clients':>44}  {b32['images_per_s']:.1f} img/s")
        model = results["app"]["model_stats"]
        print(f"max_batch_size {model['max_batch_size']} ({model['auto_batch_size']})")
        print(f"rows per TensorFlow call (one replica): {model['batch_rows']}")
        ingress = results["app"]["ingress_stats"]["models"]
        for name, versions in ingress.items():
            for version, counts in versions["versions"].items():
                print(f"rows per model call, {name} v{version}: {counts['rows_per_call']}")
    if "standin" in results:
        standin = results["standin"]
        print(f"in-process decode rate: {standin['decode_rate']['images_per_s']:.0f} img/s")
        for clients, s in standin["floor"].items():
            print(f"Ray's floor, {clients} clients: {s['images_per_s']:.0f} req/s")
        for r in standin["runs"]:
            print(f"stand-in {r['protocol']:>9}, {r['clients']:2d} clients, "
                  f"{r['ingress_replicas']} ingress, coalescing "
                  f"{'on ' if r['coalesce'] else 'off'}: {r['images_per_s']:7.1f} img/s "
                  f"p50 {r['p50_ms']:6.1f} ms")
    if "profile" in results:
        _profile_report(results["profile"])
    if "sequence" in results:
        seq = results["sequence"]
        served = seq["served_16_clients"]
        print(f"sequence mix {seq['lengths']}, 16 clients: {served['images_per_s']:.1f} rows/s "
              f"p50 {served['p50_ms']:.1f} ms; rows per TF call: {seq['batch_rows']}")
        for name, rate in seq["raw_rows_per_s"].items():
            print(f"  raw TF, {name}: {rate:.1f} rows/s")
    if "pipeline" in results:
        _pipeline_report(results["pipeline"])
    for h in results.get("handoff", []):
        print(f"handoff {h['mb']:4d} MB: {h['handoff_ms']:7.1f} ms vs np.copy "
              f"{h['copy_ms']:7.1f} ms ({h['handoff_vs_copy']:.2f}x)")
    for name, value in results["ratios"].items():
        shown = f"{value:.2f}" if isinstance(value, float) and np.isfinite(value) else value
        print(f"  {name}: {shown}")

