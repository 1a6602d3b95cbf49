"""The scaffolding every service shares (split_infer/service.py): a bad configuration is one line
and exit 2, log levels are checked and apply per logger, JSON logs are JSON, SIGTERM stops cleanly."""

from __future__ import annotations

import importlib
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from split_infer.apps.processes import free_port
from split_infer.service import EXIT_USAGE, service_main
from support.data import ROOT
from support.processes import Services
from support.redisdb import REDIS_URL
from support.wait import wait_for

SERVICES = [("edge",), ("cloud", "ingest"), ("cloud", "worker"), ("analytics",)]  # those with --config
MAINS = ["split_infer.edge.node", "split_infer.cloud.ingest", "split_infer.cloud.worker",
         "split_infer.analytics.service", "split_infer.api.app", "split_infer.apps.detect"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "split_infer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def assert_one_clear_line(out: subprocess.CompletedProcess, prog: str, *fragments: str) -> None:
    assert out.returncode == EXIT_USAGE, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith(f"split-infer {prog}: ") and all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """service_main configures this process's logging: put pytest's back afterwards."""
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("split_infer", "split_infer.cloud"):
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.unit
@pytest.mark.parametrize("service", SERVICES, ids=" ".join)
def test_a_config_pydantic_rejects_is_one_line_naming_the_file_field_and_problem(service, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [{id: c, url: /x.mp4, fps: -1}]\n")
    out = cli(*service, "--config", str(bad))
    assert_one_clear_line(out, " ".join(service), str(bad), "invalid configuration", "cameras.0.fps",
                          "greater than 0")


@pytest.mark.unit
@pytest.mark.parametrize(("text", "problem"), [
    (None, "config file not found"),
    ("cameras: [\n", "not valid YAML (line 2, column 1)"),
    ("- just\n- a list\n", "expected a mapping of settings"),
    ("redis_url: redis://h:1/0\nredis_urll: typo\n", "redis_urll: Extra inputs are not permitted"),
], ids=["missing", "yaml", "not-a-mapping", "unknown-key"])
def test_every_kind_of_config_error_is_one_line_and_exit_2(text, problem, tmp_path):
    path = tmp_path / "cloud.yaml"
    if text is not None:
        path.write_text(text)
    assert_one_clear_line(cli("cloud", "worker", "--config", str(path)), "cloud worker", str(path), problem)


@pytest.mark.unit
@pytest.mark.parametrize("module", MAINS)
def test_an_unknown_log_level_is_a_usage_error(module, capsys):
    main = importlib.import_module(module).main
    for level in ("LOUD", "split_infer.cloud=LOUD", "=INFO"):
        with pytest.raises(SystemExit) as e:
            main(["x.jpg", "--log-level", level] if module.endswith("detect") else ["--log-level", level])
        assert e.value.code == EXIT_USAGE
        assert "--log-level" in capsys.readouterr().err


@pytest.mark.unit
def test_levels_apply_per_logger_and_the_narrower_setting_wins(capsys, restore_logging):
    def run(args, stop) -> int:
        logging.getLogger("split_infer.cloud.worker").debug("worker detail")
        logging.getLogger("split_infer.edge.node").debug("edge detail")
        logging.getLogger("split_infer.edge.node").warning("edge warning")
        return 0

    argv = ["--log-level", "warning", "--log-level", "split_infer.cloud=DEBUG"]
    assert service_main("split-infer test", None, argv, lambda ap: None, run) == 0
    err = capsys.readouterr().err
    assert "worker detail" in err and "edge warning" in err and "edge detail" not in err, err


@pytest.mark.unit
def test_json_format_writes_one_json_object_per_line(capsys, restore_logging):
    def run(args, stop) -> int:
        log = logging.getLogger("split_infer.test")
        log.info("hello %s", "world")
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            log.exception("with a traceback")
        return 0

    assert service_main("split-infer test", None, ["--log-format", "json"], lambda ap: None, run) == 0
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["message"] for r in records] == ["hello world", "with a traceback"]
    assert records[0]["level"] == "INFO" and records[0]["logger"] == "split_infer.test" and records[0]["ts"]
    assert "ZeroDivisionError: boom" in records[1]["exception"]


@pytest.mark.unit
def test_a_runtime_failure_is_logged_and_exits_1(capsys, restore_logging):
    def run(args, stop) -> int:
        raise RuntimeError("the disk is on fire")

    assert service_main("split-infer test", None, [], lambda ap: None, run) == 1
    assert "the disk is on fire" in capsys.readouterr().err


@pytest.mark.redis
def test_sigterm_stops_a_service_cleanly_and_its_json_logs_stay_json(prefix, tmp_path):
    services = Services()
    port = free_port()
    plaintext = tmp_path / "cloud.yaml"
    plaintext.write_text("tls: {insecure: true}\n")  # TLS is the default; this test is about signals
    services.start("ingest", "cloud", "ingest", "--config", str(plaintext), "--no-shape-check-from-model",
                   "--listen", f"127.0.0.1:{port}",
                   "--redis-url", REDIS_URL, "--log-format", "json", env={"SPLIT_INFER_PREFIX": prefix})
    try:
        wait_for(lambda: "ingest listening" in services.log("ingest") or services.exited("ingest"), 60,
                 "the ingest to listen")
        services.signal("ingest", signal.SIGTERM)
        assert services.wait_exit("ingest", 30) == 0, services.log("ingest")
    finally:
        services.stop_all()
    records = [json.loads(line) for line in services.log("ingest").splitlines() if line.strip()]
    messages = [r["message"] for r in records]
    assert any(m.startswith("ingest listening") for m in messages), messages
    assert "SIGTERM received: stopping" in messages and messages[-1] == "ingest stopped", messages
