"""Production traffic as a version's warm-up: ``python -m
deployments.payload_warmup LOG_DIR VERSION_DIR [-n N] [--model NAME]`` picks
``N`` records from the payload log's TFRecord files under ``LOG_DIR``
(``format: prediction_log``) and writes them as the version's
``assets.extra/tf_serving_warmup_requests``, which the model replicas replay
when they load it (``deployments.replica.warmup``, TF Serving's format).

Only records that can be replayed are taken: predict logs that were
answered and hold every input's values (``keep: full`` for the inputs,
within ``max_record_bytes``); they are spread evenly over the log's files
(in name order: oldest first), at most TF Serving's 1000. Each keeps its
request alone, with no version. A file still being written may end in a
partial record: it is read up to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from deployments.codecs.prediction_log import (
    CorruptRecord,
    read_tfrecords,
    replayable,
    warmup_log,
    write_tfrecords,
)
from deployments.codecs.tfserving_protos import prediction_log_pb2

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords


def logged(log_dir: Path, model: str | None = None
           ) -> Iterator[prediction_log_pb2.PredictionLog]:
    """The replayable records of every ``*.tfrecord`` file under ``log_dir``."""
    for path in sorted(log_dir.rglob("*.tfrecord"), key=lambda p: p.name):
        with open(path, "rb") as stream:
            try:
                for data in read_tfrecords(stream):
                    log = prediction_log_pb2.PredictionLog.FromString(data)
                    if replayable(log, model):
                        yield log
            except CorruptRecord as exc:
                print(f"{path}: read up to {exc}", file=sys.stderr)


def spread(items: Sequence[prediction_log_pb2.PredictionLog], count: int
           ) -> list[prediction_log_pb2.PredictionLog]:
    """``count`` of ``items`` evenly spaced (all of them if fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def write_warmup(log_dir: Path, version_dir: Path, count: int = 100,
                 model: str | None = None) -> int:
    """Writes the version's warm-up file from the log (atomically); how many
    records it holds. A ``ValueError`` when the log has none to replay."""
    picked = spread(list(logged(log_dir, model)), min(count, MAX_RECORDS))
    if not picked:
        raise ValueError(f"{log_dir} holds no replayable PredictionLog records"
                         f"{f' of model {model!r}' if model else ''} (log with format: "
                         "prediction_log and the inputs kept in full)")
    target = version_dir / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    with open(partial, "wb") as stream:
        written = write_tfrecords(stream, (warmup_log(log).SerializeToString()
                                           for log in picked))
    partial.replace(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.payload_warmup",
        description="Write a version's TF Serving warm-up file from payload log records.")
    parser.add_argument("log_dir", type=Path, help="a payload log directory (TFRecord files)")
    parser.add_argument("version_dir", type=Path, help="the SavedModel version to warm up")
    parser.add_argument("-n", "--records", type=int, default=100,
                        help=f"records to pick (at most {MAX_RECORDS}; default 100)")
    parser.add_argument("--model", help="only this model's records (default: any)")
    args = parser.parse_args(argv)
    if not 0 < args.records <= MAX_RECORDS:
        parser.error(f"--records: 1 to {MAX_RECORDS}")
    try:
        written = write_warmup(args.log_dir, args.version_dir, args.records, args.model)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{written} records → {args.version_dir / WARMUP_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
