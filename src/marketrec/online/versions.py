"""What a model folder says about its version and what it was trained on.

A serving worker names the version in every response; a retrained folder notes the event
log offset it was trained up to, so a worker swapping it in replays only the records after
it; a trained folder notes its dataset, so `marketrec retrain` can train on it again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: the file in a retrained model folder that names the log offset it was trained up to
TRAINED_LOG = "trained_log.json"
#: the file in a model folder that names the dataset folder it was trained on
TRAINED_ON = "trained_on.json"


def model_version(folder: str | Path) -> str:
    """`<folder name>@<created_at>` from the model's manifest (a pipeline's or a single
    model's), else the folder name with a hash of the manifest: the same folder always
    names the same version, and a retrained one a new version."""
    path = Path(folder)
    for name in ("pipeline.json", "manifest.json"):
        file = path / name
        if not file.is_file():
            continue
        text = file.read_text()
        try:
            created = json.loads(text).get("created_at")
        except (json.JSONDecodeError, AttributeError):
            created = None
        if created:
            return f"{path.resolve().name}@{created}"
        return f"{path.resolve().name}@{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    return path.resolve().name


def trained_offset(folder: Path) -> int:
    """The log offset a model folder was trained up to (0: trained before any log)."""
    file = Path(folder) / TRAINED_LOG
    if not file.exists():
        return 0
    return int(json.loads(file.read_text()).get("offset", 0))


def record_training_data(folder: Path, data: Path) -> None:
    """Note in the model folder which dataset it was trained on (`marketrec retrain` reads
    it again; the model folder does not keep the training events)."""
    (Path(folder) / TRAINED_ON).write_text(json.dumps({"data": str(Path(data).resolve())}))


def training_data(folder: Path) -> Path | None:
    """The dataset folder a model was trained on, if its folder says."""
    file = Path(folder) / TRAINED_ON
    if not file.exists():
        return None
    return Path(json.loads(file.read_text())["data"])
