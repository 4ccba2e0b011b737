"""Inference passes of small torch networks through ONNX Runtime: the same function, with a
fraction of eager PyTorch's cost per operator.

A one-user request runs two small networks: the user tower over one row and the ranker over
a few hundred candidate rows. Eager PyTorch spends several microseconds dispatching each
operator, and these passes have dozens of them, so most of the user tower's time and a good
part of the ranker's were dispatch, not arithmetic. Measured side by side at 100k items, one
thread: the user tower's pass 0.33 → 0.05 ms, the ranker over 300 rows 1.15 → 0.82 ms and
over 100 rows 0.55 → 0.31 ms, outputs equal within 2e-6.

A network is exported once (`torch.onnx.export`, its TorchScript exporter: a trace, so code
paths chosen by Python conditions are fixed by the example inputs; callers export one
variant per path) and kept beside the module while its parameters are unchanged: any
in-place update (an optimizer step, `load_state_dict`) bumps a tensor's version counter and
the next call exports again (a parameter replaced by a new tensor object is not seen: torch's
optimizers and loading update in place). Training never comes here (callers check
`module.training`).

Off with `MARKETREC_ONNX=0` (or without onnxruntime installed): callers then run the module
itself. An export or session that fails is logged once and the module is used from then on.

An export costs seconds (the 100k-item model's user tower about 2 s), and every serving
worker made its own at every start and every hot swap, in the process that serves. A model
folder therefore carries them (`save_exports` when the model is saved for serving,
`load_exports` when it is loaded): a saved export is used instead of a new one only while
the module's parameters are those it was exported from (a fingerprint of their bytes, checked
at load, then the version counters as for any export).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

#: environment switch: "0" runs every network eagerly (for comparisons and debugging)
ENV_SWITCH = "MARKETREC_ONNX"

_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[nn.Module, dict[str, _Entry | None]] = weakref.WeakKeyDictionary()
#: exports read from a model folder (`load_exports`), used instead of exporting again
_saved: weakref.WeakKeyDictionary[nn.Module, _Saved] = weakref.WeakKeyDictionary()
#: one lock per module for its exports (`onnx_forward`)
_export_locks: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
#: what `save_exports` writes beside the .onnx files
EXPORTS_FILE = "exports.json"
#: what a caller gives `onnx_forward` to export a variant: the network to trace, its example
#: inputs by name (in its argument order) and their dynamic axes
Export = Callable[[], tuple[nn.Module, dict[str, torch.Tensor], dict[str, dict[int, str]]]]


@dataclass(frozen=True)
class _Entry:
    session: object  # onnxruntime.InferenceSession
    inputs: tuple[str, ...]  # what the session reads (an export drops unused inputs)
    tensors: tuple[torch.Tensor, ...]  # the module's parameters and buffers when exported
    versions: tuple[int, ...]  # and their version counters then
    threads: int
    data: bytes  # the serialized ONNX model (`save_exports` writes it)


@dataclass(frozen=True)
class _Saved:
    """Exports of a module read from a model folder, valid while its tensors are these."""

    variants: dict[str, bytes]
    tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]


def enabled() -> bool:
    """Whether inference may run through ONNX Runtime here."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _installed()


@cache
def _installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxForward:
    """One exported variant of a module: `run(**arrays)` → its first output as an array."""

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry

    def run(self, **arrays: np.ndarray) -> np.ndarray:
        entry = self._entry
        feeds = {name: np.ascontiguousarray(arrays[name]) for name in entry.inputs}
        return entry.session.run(None, feeds)[0]  # type: ignore[attr-defined]


def onnx_forward(
    module: nn.Module,
    variant: str,
    export: Export,
) -> OnnxForward | None:
    """The `variant` of `module` through ONNX Runtime, exported now if its parameters changed
    since (or never exported); None when ONNX is off or this variant failed before.
    `export()` gives what to export: the network to trace (`module` or a wrapper around it),
    its example inputs by name, in the network's argument order, and their dynamic axes."""
    if module.training or not enabled():
        return None
    threads = torch.get_num_threads()
    found, usable = _cached(module, variant, threads)
    if usable:
        return None if found is None else OnnxForward(found)
    # exported under this module's own lock, not the shared one: a worker that swaps in a
    # new version exports (or reads) its networks in a background thread for up to seconds,
    # and under one lock for all modules every request of the serving version waited for it
    with _module_lock(module):
        found, usable = _cached(module, variant, threads)  # another thread's export
        if not usable:
            found = _export(module, variant, export, threads)
            with _lock:
                _cache.setdefault(module, {})[variant] = found
    return None if found is None else OnnxForward(found)


def _cached(module: nn.Module, variant: str, threads: int) -> tuple[_Entry | None, bool]:
    """The cached variant and whether it may be used as it is (a variant that failed before
    is usable: as None, the module runs in torch)."""
    with _lock:
        variants = _cache.get(module, {})
        if variant in variants and variants[variant] is None:
            return None, True  # failed before
        entry = variants.get(variant)
    usable = entry is not None and entry.threads == threads and _current(entry)
    return entry, usable


def _module_lock(module: nn.Module) -> threading.Lock:
    with _lock:
        lock = _export_locks.get(module)
        if lock is None:
            lock = _export_locks[module] = threading.Lock()
        return lock


def _current(entry: _Entry | _Saved) -> bool:
    """Whether the exported tensors are unchanged (reading their version counters: walking
    the module for them took 50 µs a call)."""
    return all(t._version == v for t, v in zip(entry.tensors, entry.versions, strict=True))


def _tensors(module: nn.Module) -> tuple[torch.Tensor, ...]:
    return (*module.parameters(), *module.buffers())


def fingerprint(module: nn.Module) -> str:
    """A digest of the module's parameters and buffers (names, shapes, bytes)."""
    digest = hashlib.sha1()
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        data = tensor.detach().contiguous().cpu().numpy()
        digest.update(f"{name}:{data.dtype}:{data.shape};".encode())
        # the array's own buffer: hashlib reads it with the GIL released, where a copy
        # (`tobytes`) held it for tens of ms in a worker loading a version beside requests
        digest.update(memoryview(data.reshape(-1)).cast("B"))
    return digest.hexdigest()


def save_exports(modules: dict[str, nn.Module], folder: Path) -> list[str]:
    """Write the current exports of each named module under `folder` (`<name>/<variant>.onnx`
    and the module's fingerprint); returns the files written. Exports are made by running
    the module through ONNX first (a model's `warm_up`); a module without any writes
    nothing and exports on first use after loading, as before."""
    written: list[str] = []
    for name, module in modules.items():
        with _lock:
            entries = {
                variant: entry
                for variant, entry in _cache.get(module, {}).items()
                if entry is not None and _current(entry)
            }
        if not entries:
            continue
        target = Path(folder) / name
        target.mkdir(parents=True, exist_ok=True)
        for variant, entry in entries.items():
            (target / f"{variant}.onnx").write_bytes(entry.data)
            written.append(f"{name}/{variant}.onnx")
        manifest = {"fingerprint": fingerprint(module), "variants": sorted(entries)}
        (target / EXPORTS_FILE).write_text(json.dumps(manifest, indent=2))
    return written


def load_exports(modules: dict[str, nn.Module], folder: Path) -> list[str]:
    """Remember the exports `save_exports` wrote under `folder` for each named module whose
    parameters are the ones they were exported from (a fingerprint mismatch, a missing or
    unreadable file: that module exports on first use, as without them); returns the
    variants taken, as `<name>/<variant>`."""
    taken: list[str] = []
    if not enabled():
        return taken  # the modules run in torch: nothing to take
    for name, module in modules.items():
        source = Path(folder) / name
        try:
            manifest = json.loads((source / EXPORTS_FILE).read_text())
            if manifest.get("fingerprint") != fingerprint(module):
                log.warning("%s: ONNX exports of other weights; exporting again", source)
                continue
            variants = {v: (source / f"{v}.onnx").read_bytes() for v in manifest["variants"]}
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: ONNX exports unreadable (%s); exporting again", source, exc)
            continue
        tensors = _tensors(module)
        with _lock:
            _saved[module] = _Saved(variants, tensors, tuple(t._version for t in tensors))
        taken += [f"{name}/{v}" for v in sorted(variants)]
    return taken


def _export(
    module: nn.Module,
    variant: str,
    export: Export,
    threads: int,
) -> _Entry | None:
    name = f"{type(module).__name__}/{variant}"
    tensors = _tensors(module)
    versions = tuple(t._version for t in tensors)
    saved = _saved.get(module)
    data = saved.variants.get(variant) if saved is not None and _current(saved) else None
    session = None
    if data is not None:
        try:
            session = _session(data, threads)
        except Exception as exc:  # a damaged file: export afresh
            log.warning("saved ONNX export of %s unusable (%s); exporting again", name, exc)
    try:
        if session is None:
            data = _exported(export)
            session = _session(data, threads)
    except Exception as exc:  # the eager module still answers: slower, not wrong
        module.eval()
        log.warning(
            "ONNX export of %s failed (%s: %s); running it in torch", name, type(exc).__name__, exc
        )
        return None
    module.eval()
    inputs = tuple(i.name for i in session.get_inputs())
    log.debug("exported %s to ONNX (%d inputs)", name, len(inputs))
    assert data is not None
    return _Entry(session, inputs, tensors, versions, threads, data)


def _session(data: bytes, threads: int) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # with more than one thread, ORT's pool spins between runs by default: CPU taken from
    # the other workers and requests of a serving machine
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _exported(
    export: Export,
) -> bytes:
    network, example, dynamic = export()
    # the exporter restores each module's mode after the trace, and a fresh wrapper starts
    # in training mode, which it would hand down to the module: both set to eval
    network.eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the trace warns about every Python condition it fixes: the variants are chosen by
        # the caller for exactly those conditions
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            tuple(t.clone() for t in example.values()),
            buffer,
            dynamo=False,
            input_names=list(example),
            output_names=["out"],
            dynamic_axes=dynamic,
        )
    return buffer.getvalue()
