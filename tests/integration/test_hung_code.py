"""A model's preprocess code that hangs on some inputs: once every thread of
it is held, the ingress replica fails its health check and Serve replaces
it, after which requests are served again. (The accounting and the verdict
are tested in process: tests/unit/test_hung_code.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from ray import serve
from sklearn.datasets import load_digits

from harness.cluster import replica_actor_names, wait_app_running, wait_until
from tests.common import TLS
from tests.integration.conftest import deploy_config, with_test_app
from tests.integration.test_user_code import LINEAR

APP = "hungcode"
THREADS = 4  # a sync callable's own (deployments.user_code)
TIMEOUT_S = 1.0  # the app's request_timeout_s (a call is stuck after STUCK_AFTER times it)


def hanging_code(tmp_path: Path) -> Path:
    """A user's package, shipped by ``py_modules``, whose preprocess never
    returns for negative pixels."""
    package = tmp_path / "code" / "hang_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pre.py").write_text(
        "import threading\n"
        "NEVER = threading.Event()\n"
        "def to_counts(inputs):\n"
        "    if (inputs['pixels'] < 0).any():\n"
        "        NEVER.wait()\n"
        "    return {name: array * 16 for name, array in inputs.items()}\n")
    return package.parent


def test_a_hung_preprocess_gets_its_ingress_replica_replaced(base_url: str, tmp_path: Path):
    config = with_test_app(APP, args={"limits": {"request_timeout_s": TIMEOUT_S}},
                           model_args={**LINEAR, "preprocess": "hang_pkg.pre:to_counts"},
                           deployment={"ray_actor_options": {"num_cpus": 0.25}})
    preprocessor = config["applications"][-1]["deployments"][0]
    preprocessor.update(health_check_period_s=1, graceful_shutdown_timeout_s=1)
    preprocessor["ray_actor_options"]["runtime_env"]["py_modules"] = [
        f"local://{hanging_code(tmp_path)}"]
    deploy_config(config, tmp_path)
    url = f"{base_url}/{APP}/v1/models/digits:predict"
    pixels = load_digits().data[:2].astype(np.float32) / 16

    def predict(rows: np.ndarray) -> int:
        return httpx.post(url, json={"instances": rows.tolist()}, timeout=60,
                          verify=TLS).status_code

    try:
        wait_app_running(APP, 180)
        assert predict(pixels) == 200
        (first,) = replica_actor_names(APP, "Preprocessor")
        with ThreadPoolExecutor(THREADS) as pool:  # each holds one of the code's threads
            hung = list(pool.map(predict, [-pixels] * THREADS))
        assert hung == [503] * THREADS  # at their deadline
        # Every thread held: a request that would not hang waits out its
        # deadline too (the checks fail only once the calls have run
        # STUCK_AFTER deadlines, and Serve replaces after three failures).
        assert predict(pixels) == 503

        def replaced() -> bool:
            names = replica_actor_names(APP, "Preprocessor")
            return bool(names) and first not in names

        wait_until(replaced, 120, "the ingress replica with hung code to be replaced")
        wait_until(lambda: predict(pixels) == 200, 120, "requests to be served again")
    finally:
        serve.delete(APP, _blocking=False)  # (goes while the next test runs)
