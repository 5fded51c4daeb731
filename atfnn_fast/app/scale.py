"""``atfnn-fast predict --ray [ADDRESS]``: score many files on Ray Data, on this machine or a
cluster, with the rows of one-machine ``predict`` (docs/design.md#scaling-out).

* The driver (this process) expands the sources like ``predict``
  (:func:`atfnn_fast.app.predict.expand_sources`: files, folders, manifests) and hands Ray
  Data the list of ``(index, path)``; reading, features and the model run in a pool of Ray
  actors (:class:`Scorer`), each holding one predictor (ONNX or checkpoint: whatever
  ``predictor_factory`` builds) and turning each file into its row with the same function
  as ``predict`` (:func:`atfnn_fast.app.predict.file_entry`). Rows come back in the input
  order and are written by ``predict``'s :class:`~atfnn_fast.app.predict.RowWriter` (text,
  ``--json``, ``--csv``) or to a Parquet file (``--parquet``, for large runs: written as
  the rows come, atomically). Scores travel as JSON text, so they are the very numbers of
  one-machine ``predict``.
* Without ADDRESS a local Ray instance is started with the CPUs torch would use
  (``torch.get_num_threads()``), unless ``RAY_ADDRESS`` names a cluster; ``auto``,
  ``host:port`` or ``ray://host:port`` connect to one (the paths must then be readable on
  every node: shared storage).
* Failures: a bad file is its error row and the others go on (``file_entry``). A worker that
  dies (killed, out of memory) is restarted by Ray and its unfinished files are scored again
  (:data:`MAX_RESTARTS` restarts per actor, :data:`MAX_TASK_RETRIES` retries per block);
  the driver keeps the first row of each file and checks that every file came back, so each
  file appears exactly once.
* Memory: a worker holds one file at a time, read in blocks and scored ``batch_size``
  segments at a time, as in ``predict``; Ray Data's backpressure bounds what is queued.
* Progress: a bar over the files on stderr (when stderr is a terminal, or
  ``ATFNN_PROGRESS=1``; :mod:`atfnn_fast.app.progress`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from atfnn_fast._deps import require

from .predict import RowWriter, expand_sources, file_entry, load_predictor, printable

EXTRA = "scale"
MAX_RESTARTS = 3  # our choice: times Ray restarts a dead scoring actor
MAX_TASK_RETRIES = 3  # our choice: times a block of files whose actor died is sent again
# files per Ray Data block (our choice): small blocks stream rows back early and lose little
# work to a dead worker; the count adapts so a large run has about 8 blocks per worker
MAX_FILES_PER_BLOCK = 32
_ADDRESS = re.compile(r"^(auto|local|ray://.+|\[[0-9a-fA-F:]+\]:\d+|[\w.\-]+:\d+)$")


def require_ray():
    """``ray`` and ``ray.data``, or an ImportError naming the ``scale`` extra."""
    require("ray.data", EXTRA)
    return require("ray", EXTRA)


def require_serve():
    """``ray.serve``, or an ImportError naming the ``scale`` extra."""
    require_ray()
    return require("ray.serve", EXTRA)


def is_address(text: str) -> bool:
    """Whether ``--ray``'s value is a Ray address (``auto``, ``local``, ``host:port``,
    ``ray://...``) rather than the first input file (an existing path never is)."""
    return bool(_ADDRESS.match(text)) and not os.path.exists(text)


def connect(address: str | None = None, num_cpus: int | None = None):
    """Connect to Ray: an already-initialised Ray as it is; ``address`` (``auto``,
    ``host:port``, ``ray://...``), else ``RAY_ADDRESS`` from the environment; else (or
    ``local``) a new local instance with ``num_cpus`` CPUs (default: the threads torch uses),
    without the dashboard. Ray's own servers (GCS, raylet) listen on the node's address
    whatever is asked (Ray 2.60 maps 127.0.0.1 to it), behind Ray's token authentication,
    on by default. Returns the ``ray`` module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    quiet = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address in (None, "", "local") and (address == "local" or not os.environ.get("RAY_ADDRESS")):
        import torch

        ray.init(
            address="local",
            num_cpus=num_cpus or torch.get_num_threads(),
            include_dashboard=False,
            **quiet,
        )
    else:
        ray.init(address=address or None, **quiet)
    return ray


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class Scorer:
    """A Ray Data actor: builds its predictor once, then turns each ``(index, path,
    problem)`` row into ``(index, entry)`` with :func:`file_entry`. Paths and entries travel
    as ASCII JSON text: a file name that is not UTF-8 cannot be an Arrow string."""

    def __init__(self, predictor_factory: Callable[[], object], threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.predictor = predictor_factory()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        entries = [
            json.dumps(file_entry(self.predictor, path, problem or None)[0], allow_nan=False)
            for path, problem in zip(
                (json.loads(str(p)) for p in batch["path"]), batch["problem"], strict=True
            )
        ]
        return {"index": np.asarray(batch["index"], dtype=np.int64), "entry": np.asarray(entries)}


def iter_entries(
    predictor_factory: Callable[[], object],
    listed: Sequence[tuple[str, str | None]],
    *,
    workers: int | None = None,
    threads: int = 1,
    num_gpus: float = 0,
    files_per_block: int | None = None,
) -> Iterator[dict]:
    """The entry of each ``(path, problem)`` of ``listed`` (:func:`expand_sources`), in
    order, scored by ``workers`` Ray actors (default: one per CPU of the cluster, or per GPU
    with ``num_gpus``) with ``threads`` threads each. Ray must be connected
    (:func:`connect`). Every file is yielded exactly once."""
    ray = require_ray()
    from ray.data import ActorPoolStrategy, DataContext

    if not listed:
        return
    if num_gpus and not workers:
        workers = int(ray.cluster_resources().get("GPU", 0) // num_gpus)
        if not workers:
            raise ValueError("--ray with a GPU device or provider: the Ray cluster has no GPU")
    workers = workers or max(1, cluster_cpus(ray) // max(1, threads))
    per_block = files_per_block or min(MAX_FILES_PER_BLOCK, max(1, len(listed) // (8 * workers)))
    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # predict_ray's bar counts files
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines and bar notice
    # the paths travel as ASCII JSON too: a name that is not UTF-8 cannot be an Arrow string
    items = [
        {"index": i, "path": json.dumps(path), "problem": problem or ""}
        for i, (path, problem) in enumerate(listed)
    ]
    blocks = max(1, -(-len(items) // per_block))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    with warnings.catch_warnings():
        # max_restarts / max_task_retries have no named parameter yet in Ray 2.60
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            Scorer,
            fn_constructor_kwargs=dict(predictor_factory=predictor_factory, threads=threads),
            batch_size=1,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=min(workers, blocks)),
            num_cpus=threads,
            num_gpus=num_gpus or None,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES,
        )
    seen: set[int] = set()
    for row in ds.iter_rows():
        index = int(row["index"])
        if index in seen:  # never seen in practice; the guarantee is ours, not luck
            continue
        seen.add(index)
        yield json.loads(str(row["entry"]))
    missing = [path for i, (path, _) in enumerate(listed) if i not in seen]
    for path in missing:  # nor this: each file still gets its row
        yield {"path": path, "error": f"{path}: no result came back from the Ray workers"}


class ParquetRows:
    """Rows written to a Parquet file as they come (``path, label, <one score column per
    label>, error``, like ``--csv``), in row groups of :data:`ROW_GROUP` rows so memory stays
    flat; the file appears only when complete (a temporary name, renamed on
    :meth:`close`)."""

    ROW_GROUP = 10_000

    def __init__(self, path: str | os.PathLike, labels: Sequence[str]) -> None:
        from atfnn_fast.files import temp_path

        self.pa = require("pyarrow", EXTRA)
        self.pq = require("pyarrow.parquet", EXTRA)
        self.path = Path(path)
        self.labels = list(labels)
        fields = [("path", self.pa.string()), ("label", self.pa.string())]
        fields += [(label, self.pa.float64()) for label in self.labels]
        self.schema = self.pa.schema([*fields, ("error", self.pa.string())])
        self.tmp = temp_path(self.path)
        self.writer = self.pq.ParquetWriter(str(self.tmp), self.schema)
        self.pending: list[dict] = []
        self.rows = self.failed = 0

    def write(self, entry: dict, text: str | None = None) -> None:
        if "error" in entry:
            self.failed += 1
            print(f"atfnn-fast: error: {printable(entry['error'])}", file=sys.stderr, flush=True)
        scores = entry.get("scores", {})
        row = {"path": printable(entry["path"]), "label": entry.get("label")}
        row.update({label: scores.get(label) for label in self.labels})
        row["error"] = entry.get("error")
        self.pending.append(row)
        self.rows += 1
        if len(self.pending) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(self.pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self) -> int:
        from atfnn_fast.files import fsync_dir

        self._flush()
        self.writer.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return 1 if self.failed else 0

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class _Counted:
    """An iterator with a length, for the progress bar's total."""

    def __init__(self, it: Iterator, total: int) -> None:
        self.it, self.total = it, total

    def __iter__(self):
        return self.it

    def __len__(self) -> int:
        return self.total


def predict_ray(
    sources: Sequence[str | os.PathLike],
    *,
    address: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    device: str = "cpu",
    provider: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    json_list: bool = False,
    csv_rows: bool = False,
    parquet: str | os.PathLike | None = None,
) -> int:
    """``predict --ray``: the rows of ``predict`` for ``sources``, scored on Ray; returns
    ``predict``'s exit code (1 if any file failed)."""
    from atfnn_fast.files import check_output
    from atfnn_fast.inference import DEFAULT_BATCH_SIZE

    from .progress import progress

    if parquet is not None:
        check_output(parquet, inputs=tuple(sources), option="--parquet")
    kwargs = dict(
        checkpoint=checkpoint,
        onnx=onnx,
        device=device,
        provider=provider,
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
    )
    probe = load_predictor(**kwargs)  # a bad model fails here, once, not in every worker
    labels = list(probe.labels)
    del probe
    gpu = device == "cuda" or provider in ("cuda", "tensorrt")
    if onnx is not None:
        kwargs["threads"] = 1  # one ONNX Runtime thread per actor (one CPU each)
    factory = functools.partial(load_predictor, **kwargs)
    ray = connect(address)
    print(
        f"predict: Ray {ray.__version__}, {cluster_cpus(ray)} CPUs, "
        f"{'checkpoint ' + str(checkpoint) if checkpoint else str(onnx) + ' on ONNX Runtime'}",
        file=sys.stderr,
        flush=True,
    )
    listed = expand_sources(sources)
    out = (
        ParquetRows(parquet, labels)
        if parquet is not None
        else RowWriter(labels, json_list=json_list, csv_rows=csv_rows)
    )
    entries = iter_entries(factory, listed, workers=workers, num_gpus=1 if gpu else 0)
    try:
        with progress(_Counted(entries, len(listed)), desc="predict", unit="file") as rows:
            for entry in rows:
                out.write(entry)
    except BaseException:
        if isinstance(out, ParquetRows):
            out.discard()
        raise
    code = out.close()
    if parquet is not None:
        print(f"wrote {parquet}: {out.rows} rows ({out.failed} errors)", file=sys.stderr)
    return code
