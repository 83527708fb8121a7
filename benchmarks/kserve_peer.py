"""KServe's Python ModelServer as a peer: its own venv (made once, pinned),
the benchmark model served by ``benchmarks/kserve_model.py``, stopped on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.cluster import http_ok, wait_until

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-kserve"
REQUIREMENTS = ["kserve==0.21.0", "tensorflow==2.21.0"]


def ensure_venv() -> Path:
    """The peer's python, installing its venv on first use (a few minutes)."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == " ".join(REQUIREMENTS):
        return python
    print(f"creating {VENV} with {' '.join(REQUIREMENTS)} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    stamp.write_text(" ".join(REQUIREMENTS))
    return python


class KServePeer:
    def __init__(self, model_dir: Path, port: int, workers: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._args = ["--model-dir", str(model_dir), "--port", str(port),
                      "--workers", str(workers)]
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> KServePeer:
        self._process = subprocess.Popen(
            [str(ensure_venv()), str(HERE / "kserve_model.py"), *self._args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

        def ready() -> bool:
            if self._process.poll() is not None:
                raise RuntimeError(f"KServe peer exited with {self._process.returncode}")
            return http_ok(f"{self.url}/v2/health/ready")

        wait_until(ready, 300, "the KServe peer to be ready")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
