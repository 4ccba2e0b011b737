"""Exposure logging: what each response showed, to whom, under which experiment variant.

Every worker appends one JSON line per (response, experiment) to its own file in the
exposure folder (no lock between processes, no shared file to corrupt); lines are written
through at once (line-buffered), so a stopped worker loses nothing already answered, and a
killed one at most its last line. `read_exposures` reads a folder of them (or a Parquet
file) for `marketrec experiment report`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from marketrec.core.errors import DataError
from marketrec.experiments.assignment import Assignment

#: the state folder's subfolder the service writes exposures to
EXPOSURE_FOLDER = "exposures"


class ExposureLog:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"exposures-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._file = self.path.open("a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def record(
        self,
        request_id: str,
        user_id: str,
        assignments: Sequence[Assignment],
        items: Sequence[str],
        region: str | None = None,
        model_version: str | None = None,
        ts: float | None = None,
    ) -> None:
        """One line per experiment the response took part in (items in their positions;
        `model_version`: the version that answered)."""
        at = time.time() if ts is None else ts
        lines = "".join(
            json.dumps(
                {
                    "request_id": request_id,
                    "ts": at,
                    "user_id": user_id,
                    "experiment": a.experiment,
                    "layer": a.layer,
                    "variant": a.variant,
                    "forced": a.forced,
                    "region": region,
                    "items": list(items),
                    "model_version": model_version,
                }
            )
            + "\n"
            for a in assignments
        )
        with self._lock:
            self._file.write(lines)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_exposures(path: str | Path) -> pl.DataFrame:
    """Exposures from a Parquet file, a JSONL file or a folder of JSONL files; `ts` as UTC
    datetimes."""
    source = Path(path)
    if source.is_dir():
        files = sorted(source.glob("*.jsonl"))
        if not files:
            raise DataError(str(source), "no exposure files (*.jsonl) in this folder")
        frames = [_read_jsonl(f) for f in files if f.stat().st_size]
        if not frames:
            raise DataError(str(source), "the exposure files are empty: no exposures yet")
        frame = pl.concat(frames, how="diagonal")
    elif source.suffix == ".jsonl":
        frame = _read_jsonl(source)
    elif source.is_file():
        try:
            return pl.read_parquet(source)
        except Exception as exc:  # polars raises several types for corrupt files
            raise DataError(str(source), f"not a readable Parquet file ({str(exc)[:200]})") from exc
    else:
        raise DataError(str(source), "no such exposure file or folder")
    return frame.with_columns(
        ts=pl.from_epoch(
            pl.col("ts").cast(pl.Float64).mul(1e6).cast(pl.Int64), time_unit="us"
        ).dt.replace_time_zone("UTC")
    )


def _read_jsonl(file: Path) -> pl.DataFrame:
    try:
        return pl.read_ndjson(file)
    except Exception as exc:
        raise DataError(str(file), f"not readable exposure lines ({str(exc)[:200]})") from exc


__all__ = ["EXPOSURE_FOLDER", "ExposureLog", "read_exposures"]
