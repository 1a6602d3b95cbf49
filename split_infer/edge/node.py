"""`split-infer edge --config edge.yaml`: cameras -> features (OpenVINO) -> codec -> one gRPC stream.

    capture threads (newest frame per camera)                      edge/capture.py
      -> scheduler (round-robin, one frame per camera in flight)   edge/scheduler.py
      -> OpenVINO AsyncInferQueue (across cameras)                 edge/extractor.py
      -> callback thread: codec encoder per camera, thumbnails     edge/scheduler.py
      -> Outbox (bounded; oldest dropped and counted offline)      edge/outbox.py
      -> one bidirectional gRPC stream; Acks return per-camera     edge/transport.py
         credit, RETRY, key-frame requests
    every outcome counted once                                     edge/ledger.py

This module wires them together and runs the node's lifecycle. It and everything it imports stay
free of torch and ultralytics (a test checks it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from split_infer import metrics
from split_infer.config import EDGE_TOKEN_ENV, CameraConfig, ConfigError, EdgeConfig, load_config
from split_infer.edge.capture import CaptureState
from split_infer.edge.extractor import EdgeExtractor
from split_infer.edge.ledger import Ledger
from split_infer.edge.outbox import Outbox
from split_infer.edge.precision import Choice, sample_frames, select_precision
from split_infer.edge.scheduler import FrameScheduler
from split_infer.edge.transport import IngestLink
from split_infer.model.export import default_ir_dir
from split_infer.observability import Probe
from split_infer.redact import redact_url
from split_infer.service import EXIT_FAILURE, EXIT_OK, StopEvent, service_main

if TYPE_CHECKING:
    from openvino import AsyncInferQueue

log = logging.getLogger(__name__)

TOTALS = ("extracted", "acked", "rejected", "dropped_buffer", "dropped_superseded")  # the exit summary


def resolve_model_dir(cfg: EdgeConfig) -> Path:
    if cfg.model_dir is not None:
        return Path(cfg.model_dir)
    return default_ir_dir(cfg.model.name, cfg.model.cut, cfg.model.imgsz)


def load_extractor(cfg: EdgeConfig) -> EdgeExtractor:
    model_dir = resolve_model_dir(cfg)
    if not (model_dir / "edge.json").exists():  # the config names a model that is not there: exit 2
        w, h = cfg.model.imgsz
        raise ConfigError(
            f"no exported edge model in {model_dir}; create it (on a machine with the export extra) with\n"
            f"  split-infer export --model {cfg.model.name} --cut {cfg.model.cut} --imgsz {w}x{h} --out {model_dir}")
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": cfg.threads} if cfg.threads else {}
    try:
        choice = choose_precision(cfg, model_dir, config or None)
    except ValueError as e:
        raise ConfigError(f"precision: {e}") from None
    config["PERFORMANCE_HINT"] = performance_hint(cfg)
    extractor = EdgeExtractor(choice.model_dir, cfg.device, precision=choice.hint, config=config)
    extractor.precision = choice.precision
    log.info("edge extractor: %s precision, %s hint, %d infer request(s)", choice.precision or "default",
             config["PERFORMANCE_HINT"], infer_requests(cfg, extractor))
    return extractor


def performance_hint(cfg: EdgeConfig) -> str:
    """LATENCY for one camera (all cores on each frame); THROUGHPUT for more: one stream per core
    runs one frame per camera at a time on a single thread each, with no cross-core sync per layer."""
    if cfg.performance_hint != "auto":
        return cfg.performance_hint.upper()
    return "THROUGHPUT" if len(cfg.cameras) > 1 else "LATENCY"


def infer_requests(cfg: EdgeConfig, extractor: EdgeExtractor) -> int:
    """Requests in flight: the configured count, else OpenVINO's optimum for the hint, at least 2 so
    one frame is prepared while another runs, and no more than the cameras (one frame each)."""
    if cfg.infer_requests is not None:
        return cfg.infer_requests
    return max(1, min(max(2, extractor.optimal_requests()), len(cfg.cameras)))


def choose_precision(cfg: EdgeConfig, model_dir: Path, config: dict[str, Any] | None) -> Choice:
    """cfg.precision if explicit, else the fastest within tolerance measured on this device (cached)."""
    if cfg.precision != "auto":
        return select_precision(model_dir, cfg.device, cfg.precision)

    def frames() -> list[np.ndarray]:  # read only when the choice is not cached
        batches, source = sample_frames(model_dir, [c.url for c in cfg.cameras])
        log.info("edge precision: measuring on %d frame(s) from %s", len(batches), redact_url(source))
        return batches

    props = {"PERFORMANCE_HINT": "LATENCY", **(config or {})}
    return select_precision(model_dir, cfg.device, "auto", frames=frames, props=props, threads=cfg.threads)


class EdgeNode:
    def __init__(self, cfg: EdgeConfig, extractor: EdgeExtractor | None = None, *, sent_log: Path | None = None,
                 stats_path: Path | None = None, max_frames: int | None = None,
                 drain_timeout_s: float = 10.0, connect_timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.session = secrets.token_hex(8)  # new at every start: (camera, session, seq) is unique
        self.extractor = extractor if extractor is not None else load_extractor(cfg)
        self.outbox = Outbox(cfg.buffer_frames, cfg.inflight_frames)
        self.ledger = Ledger([c.id for c in cfg.cameras], self.session, sent_log, on_loss=self._request_key_frame)
        self.link = IngestLink(cfg, self.outbox, self.ledger, self._request_key_frame, self._producing,
                               connect_timeout_s)
        self.scheduler = FrameScheduler(cfg, self.extractor, self.outbox, self.ledger, self.link, max_frames)
        self.drain_timeout_s = drain_timeout_s
        self.stats_path = stats_path
        self._closing = False  # no new frames; deliver what is buffered
        self._started = time.time()
        self._cpu0 = time.process_time()  # reset when run() starts: the figure excludes the model load
        self.probe = Probe()  # /healthz: the event loop turns; /readyz: a stream to the ingest is open

    def _request_key_frame(self, camera: str) -> None:
        self.scheduler.request_key_frame(camera)

    def _producing(self) -> bool:
        """Frames may still reach the outbox: the node is running, or a frame is in OpenVINO."""
        return not self._closing or bool(self.scheduler.busy)

    # -- stats -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        cams = {cid: self._camera_stats(cid) for cid in self.scheduler.captures}
        return {"node_id": self.cfg.node_id, "session": self.session, "connected": self.link.connected,
                "cloud": self.cfg.cloud, "last_connection_error": self.link.last_error,
                "reconnects": self.link.reconnects, "buffered": len(self.outbox),
                "inflight": len(self.outbox.inflight), "undelivered": len(self.outbox) + len(self.outbox.inflight),
                "uptime_s": round(time.time() - self._started, 3), "cpu_s": round(time.process_time() - self._cpu0, 3),
                "frames_taken": self.scheduler.taken, "cameras": cams}

    def _camera_stats(self, camera: str) -> dict[str, Any]:
        capture = self.scheduler.captures[camera].snapshot()
        stats = self.ledger.camera_stats(camera)
        anchor = self.scheduler.anchors.get(camera)
        if anchor is not None and anchor.bytes_per_frame is not None:
            stats["x264_bytes_per_frame"] = {"crf": anchor.crf, "bytes": round(anchor.bytes_per_frame, 1)}
        stats["capture"] = capture
        metrics.EDGE_CAMERA_UP.labels(camera).set(int(capture["state"] == CaptureState.ONLINE.value))
        return stats

    def _write_stats(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(self.stats_path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.stats(), indent=1))
        os.replace(tmp, self.stats_path)

    async def _stats_loop(self) -> None:
        while True:
            self._write_stats()
            self.probe.beat()
            self.probe.set_ready(self.link.connected,
                                 f"no stream to the ingest: {self.link.last_error or 'connecting'}")
            await asyncio.sleep(1.0)

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> dict[str, Any]:
        """Run until `stop`, `duration_s`, `max_frames`, or every source ended; then drain and return stats."""
        self._cpu0 = time.process_time()
        queue = self.extractor.async_queue(infer_requests(self.cfg, self.extractor), self.scheduler.on_features)
        self.scheduler.start_captures()
        give_up = asyncio.Event()
        sender = asyncio.create_task(self.link.run(give_up))
        stats_task = asyncio.create_task(self._stats_loop())
        waiters = [asyncio.create_task(self.scheduler.run(queue)), asyncio.create_task(stop.wait())]
        if duration_s is not None:
            waiters.append(asyncio.create_task(asyncio.sleep(duration_s)))
        log.info("edge %s session %s: %d camera(s), model %s cut %s %sx%s, codec %s, ingest %s", self.cfg.node_id,
                 self.session, len(self.cfg.cameras), self.extractor.meta.get("model"),
                 self.extractor.meta.get("cut"), *self.scheduler.imgsz, self.cfg.codec, self.cfg.cloud)
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a scheduler that failed fails the node (exit 1), never a quiet exit 0
        finally:
            self._closing = True
            for w in waiters:
                w.cancel()
            await self._drain(queue)
            give_up.set()
            sent = (await asyncio.gather(sender, return_exceptions=True))[0]
            stats_task.cancel()
            await asyncio.to_thread(self.scheduler.stop_captures)
            stats = self.stats()
            self._write_stats()
            self.ledger.close()
        if isinstance(sent, Exception):
            raise RuntimeError(f"the link to the ingest failed: {sent}") from sent
        return stats

    async def _drain(self, queue: AsyncInferQueue) -> None:
        """Let the frames in OpenVINO finish and get queued, then deliver the buffer, unless the
        cloud stays away for `drain_timeout_s`."""
        await asyncio.to_thread(queue.wait_all)
        await asyncio.to_thread(self.scheduler.finish_encoding)
        for _ in range(100):
            if not self.scheduler.busy:
                break
            await asyncio.sleep(0.01)
        self.link.wake()
        try:
            await asyncio.wait_for(self._until_drained(), self.drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("stopping with %d frame(s) undelivered", len(self.outbox) + len(self.outbox.inflight))

    async def _until_drained(self) -> None:
        while not self.link.done:
            await asyncio.sleep(0.02)


# -- command line ----------------------------------------------------------------------------------


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--camera", action="append",
                    help="camera URL (repeatable); replaces the config's cameras (default: the config's)")
    ap.add_argument("--cloud", help="ingest host:port (default: the config's)")
    ap.add_argument("--token", action=_NoSecretOnArgv, help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, help="stop after taking N frames across cameras (default: no limit)")
    ap.add_argument("--duration", type=float, help="stop after S seconds (default: run until stopped)")
    ap.add_argument("--stats-json", type=Path, help="write per-camera stats here every second (default: none)")
    ap.add_argument("--sent-log", type=Path,
                    help="append one JSON line per frame outcome, for tests and benchmarks (default: none)")
    ap.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to deliver the buffer on stop")


class _NoSecretOnArgv(argparse.Action):
    """`--token` is gone: every user of the machine reads a process's arguments (`ps`)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        parser.error(f"--token was removed: a command line is visible to every user (ps). Give the token as "
                     f"token_file: PATH in the config, token: ${{VAR}}, or the {EDGE_TOKEN_ENV} environment variable")


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    cameras = ([CameraConfig(id=f"cam{i}", url=u, loop=True).model_dump() for i, u in enumerate(args.camera)]
               if args.camera else None)
    cfg = load_config(args.config, EdgeConfig, {"cloud": args.cloud, "cameras": cameras})
    if not cfg.cameras:
        raise ConfigError(f"{args.config or 'defaults'}: no cameras configured (cameras: or --camera)")
    return cfg


def _run(args: argparse.Namespace, stop: StopEvent) -> int:
    cfg = config_from_args(args)
    probe = Probe(starting="loading the edge model")
    metrics.set_build_info(cfg.model.name, cfg.codec)
    metrics.start_metrics_server(cfg.metrics_port, cfg.metrics_addr, live=probe.live, ready=probe.ready)
    node = EdgeNode(cfg, sent_log=args.sent_log, stats_path=args.stats_json, max_frames=args.frames,
                    drain_timeout_s=args.drain_timeout)
    node.probe = probe

    async def run_until_stopped() -> dict[str, Any]:
        return await node.run(stop.asyncio_event(), args.duration)

    stats = asyncio.run(run_until_stopped())
    totals: dict[str, int] = defaultdict(int)
    for camera in stats["cameras"].values():
        for k in TOTALS:
            totals[k] += camera[k]
    print(json.dumps({"session": stats["session"], **totals, "undelivered": stats["undelivered"],
                      "reconnects": stats["reconnects"]}), file=sys.stderr)
    code = exit_code(stats)
    sys.stderr.flush()
    sys.stdout.flush()
    if any(cap.threads_alive for cap in node.scheduler.captures.values()):
        # A reader still blocked inside FFmpeg would abort the interpreter at exit; leave now.
        os._exit(code)
    return code


def exit_code(stats: dict[str, Any]) -> int:
    """1 when the run failed its purpose: no camera gave a frame, or frames never reached the cloud."""
    if not stats["frames_taken"]:
        log.error("no camera delivered a frame: check the camera URLs (stats per camera: --stats-json)")
        return EXIT_FAILURE
    if stats["undelivered"]:
        log.error("stopped with %d frame(s) undelivered to the ingest at %s (%s)", stats["undelivered"],
                  stats["cloud"], stats["last_connection_error"] or "it did not acknowledge them in time")
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return service_main("split-infer edge", __doc__, argv, _add_arguments, _run,
                        config_help="edge YAML (EdgeConfig: cameras, cloud address, tls, token_file, model, codec)")
