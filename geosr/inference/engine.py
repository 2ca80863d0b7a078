"""The tile engine: what a worker needs to predict tiles (:class:`TileJob`), the
prediction itself (:func:`predict_tiles`), and where tiles run: local threads or a
dask distributed cluster, with at most a few tiles in flight, in order."""


from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from geosr.errors import InputError
from geosr.grid import Grid
from geosr.inference.config import Method
from geosr.inference.tiling import Tile, TilePlan
from geosr.inference.timing import TIMES
from geosr.io.read import AlignedReader, OnGridReader, ReaderCache, open_reader

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs to predict tiles of one input; no open handles.

    Attributes:
        method: the method.
        fine: the fine grid (aux are read onto it).
        factor: fine pixels per coarse cell.
        aux: ``(path, resampling)`` per aux layer, in the order the method expects;
            resampling None: the source is on the grid's lattice (read without warping).
        fits: per-band regression fits (``sharpen``).
        model_path: bundle path (``net``), for workers that load it themselves.
        device: device string for workers that load the model themselves.
        model_conserve: the ``conserve`` given to the Predictor.
        batch: samples per network call.
        context: coarse cells read around each tile's ``read`` window for the network's
            coarse encoder only (the blended overlap then needs only the small fine
            decoder's context); see :func:`context_margin`.
        spread: also predict the per-pixel spread (a probabilistic model, or the
            sharpening fit's residual spread); tiles then hold the bands' best
            estimates followed by their spreads.
        scenes: per band of the group being predicted, its
            :class:`~geosr.model.scene.Scene` (a scene-adaptive model): statistics of the
            whole band, so that every tile sees the same ones.
        cell_mean: ``CellMean`` value; ``aux``: a network conserves the pixels where the
            aux has data apart from the others (``auto`` is resolved before tiles run).
    """

    method: Method
    fine: Grid
    factor: int
    aux: tuple[tuple[str, Resampling | None], ...] = ()
    fits: tuple[Any, ...] = ()
    model_path: str | None = None
    device: str = "cpu"
    model_conserve: bool | None = None
    batch: int = 1
    context: int = 0
    spread: bool = False
    scenes: tuple[Any, ...] = ()
    cell_mean: str = "cell"


def context_margin(job: TileJob, read: Window) -> tuple[int, int, int, int]:
    """Coarse cells (top, left, bottom, right) of encoder context around ``read``.

    ``job.context`` per side, clipped to the grid; ``read`` is aligned to coarse cells.
    """
    f, c = job.factor, job.context
    top, left = int(read.row_off) // f, int(read.col_off) // f
    bottom = (job.fine.height - int(read.row_off + read.height)) // f
    right = (job.fine.width - int(read.col_off + read.width)) // f
    return min(c, top), min(c, left), min(c, bottom), min(c, right)


def _expand(win: Window, margin: tuple[int, int, int, int], f: int) -> Window:
    top, left, bottom, right = margin
    return Window(win.col_off - left * f, win.row_off - top * f,
                  win.width + (left + right) * f, win.height + (top + bottom) * f)


@dataclass
class Resources:
    """Per-process helpers for :func:`predict_tiles`: open readers and a loaded model."""

    readers: ReaderCache | None = None
    predictor: Any = None


_PREDICTORS: dict[tuple, Any] = {}


_PREDICTORS_LOCK = threading.Lock()


def _worker_predictor(job: TileJob) -> Any:
    """The job's model, loaded once per worker process (dask path)."""
    key = (job.model_path, job.device, job.model_conserve)
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            from geosr.device import resolve_device
            from geosr.model.bundle import load_bundle
            from geosr.model.predictor import Predictor

            _PREDICTORS[key] = Predictor(load_bundle(job.model_path),
                                         device=resolve_device(job.device),
                                         conserve=job.model_conserve)
        return _PREDICTORS[key]


def predict_tiles(job: TileJob, tiles: Sequence[Tile], coarse_wins: Sequence[np.ndarray],
                  res: Resources | None = None) -> list[np.ndarray]:
    """Predict tiles: read their aux windows, run the method.

    Args:
        job: what to run.
        tiles: tiles of one shape (their ``read`` windows are predicted).
        coarse_wins: per tile, the coarse field ``(bands, h, w)`` under ``tile.read``.
        res: open readers / loaded model; None (dask workers) opens what is needed here.

    Returns:
        Per tile, ``(bands, read rows, read cols)`` float32 with NaN nodata;
        ``(2 * bands, ...)`` with ``job.spread`` (estimates, then spreads).
    """
    from geosr.baselines import sharpen_bands, upsample

    t_read = time.perf_counter()
    with contextlib.ExitStack() as stack:
        def reader(path: str, resampling: Resampling | None) -> AlignedReader | OnGridReader:
            if res is not None and res.readers is not None:
                return res.readers.get(path, job.fine, resampling)
            return stack.enter_context(open_reader(path, job.fine, resampling))

        auxes = []
        for tile in tiles:
            if job.aux:
                win = _expand(tile.read, context_margin(job, tile.read), job.factor)
                auxes.append(np.concatenate([reader(p, r).read(win, 1) for p, r in job.aux]))
            else:
                h, w = int(tile.read.height), int(tile.read.width)
                auxes.append(np.zeros((0, h, w), np.float32))
    TIMES.add("read", time.perf_counter() - t_read)

    f = job.factor
    if job.method is Method.bicubic:
        return [upsample(c, f, "bicubic") for c in coarse_wins]
    if job.method is Method.sharpen:
        outs = [sharpen_bands(job.fits, c, a, f) for c, a in zip(coarse_wins, auxes, strict=True)]
        if job.spread:  # the scene fit's residual spread, the same at every pixel
            outs = [np.concatenate([o, np.stack([np.where(np.isfinite(o[b]), np.float32(
                job.fits[b].resid_std), np.float32(np.nan)) for b in range(o.shape[0])])])
                for o in outs]
        return outs
    predictor = res.predictor if res is not None and res.predictor is not None \
        else _worker_predictor(job)
    bands = coarse_wins[0].shape[0]
    coarse = np.concatenate(coarse_wins).astype(np.float32)
    aux = np.concatenate([np.repeat(a[None], bands, axis=0) for a in auxes]) if job.aux else None
    margin = context_margin(job, tiles[0].read)  # tiles of one batch share their shape
    # Samples are tile-major, band-minor (the concatenation above).
    scenes = list(job.scenes) * len(tiles) if job.scenes else None
    outs = []
    for k in range(0, coarse.shape[0], max(1, job.batch)):
        extra: dict[str, Any] = {"with_spread": True} if job.spread else {}
        if job.cell_mean == "aux":
            extra["mean_over_aux"] = True
        if scenes is not None:
            extra["scenes"] = scenes[k:k + job.batch]
        outs.append(np.asarray(predictor.predict(
            coarse[k:k + job.batch], None if aux is None else aux[k:k + job.batch],
            margin=margin, **extra), dtype=np.float32))
    pred = np.concatenate(outs)
    if job.spread:  # (n, 2, H, W) -> per tile (2 * bands, H, W): estimates, then spreads
        return [pred[i * bands:(i + 1) * bands].transpose(1, 0, 2, 3).reshape(
            2 * bands, *pred.shape[2:]) for i in range(len(tiles))]
    return [pred[i * bands:(i + 1) * bands] for i in range(len(tiles))]


def _timed_tiles(job: TileJob, tiles, coarse_wins, res: Resources) -> list[np.ndarray]:
    """:func:`predict_tiles`, its time counted (stage ``read`` + ``predict``)."""
    with TIMES("tiles"):
        return predict_tiles(job, tiles, coarse_wins, res)


class _LocalEngine:
    """Local threads; keeps readers open per thread."""

    def __init__(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geosr-tile")
        self.readers = ReaderCache()
        self.slots = 2 * workers

    def submit(self, job: TileJob, tiles, coarse_wins, predictor):
        return self.pool.submit(_timed_tiles, job, tiles, coarse_wins,
                                Resources(self.readers, predictor))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.readers.close()


class _DaskEngine:
    """A dask distributed cluster; each task opens its own readers."""

    def __init__(self, address: str):
        try:
            from dask.distributed import Client
        except ImportError as e:  # pragma: no cover - dask[distributed] is a dependency
            raise InputError("--scheduler needs dask.distributed; "
                             "pip install 'dask[distributed]'") from e
        kw: dict[str, Any] = {"timeout": "20s", "set_as_default": False}
        if "://" in address:
            target = {"address": address}
        elif Path(address).is_file():
            target = {"scheduler_file": address}
        else:
            raise InputError(f"--scheduler {address!r}: neither an address (tcp://host:port) nor "
                             "an existing scheduler file; expected e.g. tcp://10.0.0.5:8786 or "
                             "~/scheduler.json")
        try:
            self.client = Client(**target, **kw)
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {address}: cannot connect ({e}); is the scheduler "
                             "running and reachable from here?") from e
        threads = sum(self.client.nthreads().values()) or 1
        self.workers = threads
        self.slots = 2 * threads
        log.info("dask: %d worker thread(s) at %s", threads, self.client.scheduler.address)

    def submit(self, job: TileJob, tiles, coarse_wins, predictor):
        return self.client.submit(predict_tiles, job, list(tiles), list(coarse_wins), None,
                                  pure=False)

    def close(self) -> None:
        self.client.close()


def _ordered(engine, items: Iterator[tuple], job: TileJob, predictor) -> Iterator[tuple]:
    """Submit ``(tiles, coarse_wins)`` items, at most ``engine.slots`` in flight; yield
    ``(tiles, predictions)`` in submission order."""
    pending: deque = deque()
    try:
        for tiles, wins in items:
            pending.append((tiles, engine.submit(job, tiles, wins, predictor)))
            while len(pending) >= engine.slots:
                t, fut = pending.popleft()
                yield t, fut.result()
        while pending:
            t, fut = pending.popleft()
            yield t, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()


def _batches(plan: TilePlan, row: int, size: int,
             key: Callable[[Tile], Any] | None = None) -> Iterator[list[Tile]]:
    """Consecutive tiles of one tile row with the same read shape (and ``key``), ``size``
    at most."""
    batch: list[Tile] = []

    def shape(t: Tile) -> tuple:
        return (t.read.height, t.read.width, key(t) if key else None)

    for tile in plan.row_tiles(row):
        if batch and (len(batch) >= size or shape(batch[0]) != shape(tile)):
            yield batch
            batch = []
        batch.append(tile)
    if batch:
        yield batch


def _tile_items(plan: TilePlan, coarse: np.ndarray, tile_batch: int,
                job: TileJob) -> Iterator[tuple]:
    for i in range(plan.rows.count):
        for tiles in _batches(plan, i, tile_batch, lambda t: context_margin(job, t.read)):
            wins = []
            for t in tiles:
                c = plan.coarse(_expand(t.read, context_margin(job, t.read), plan.factor))
                wins.append(np.ascontiguousarray(
                    coarse[:, c.row_off:c.row_off + c.height, c.col_off:c.col_off + c.width]))
            yield tiles, wins
