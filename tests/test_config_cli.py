"""`split-infer --version` and `split-infer config check|schema` (issue 13, "Config" and "CLI")."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import split_infer
from split_infer import cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "deploy/edge/edge.example.yaml", ROOT / "deploy/cloud/cloud.example.yaml"]

# Five problems on known lines: a bound, an unset ${VAR}, a bound inside a list, an unknown key,
# and a validator's own error.
BROKEN_EDGE = """\
node_id: edge-0
cloud: ingest:50051
buffer_frames: 0
cameras:
  - id: street-1
    url: ${SPLIT_INFER_TEST_NEVER_SET}
    fps: -1
    colour: red
model:
  imgsz: [641, 384]
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point's code path, in a fresh interpreter (as an operator runs it)."""
    return subprocess.run([sys.executable, "-m", "split_infer.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag_prints_the_installed_version(flag: str) -> None:
    expected = importlib.metadata.version("split-infer")
    done = run_cli(flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"split-infer {expected}"
    assert split_infer.__version__ == expected


def test_version_has_one_source() -> None:
    """pyproject.toml is the only file that writes the version down."""
    expected = importlib.metadata.version("split-infer")
    holders = [p.relative_to(ROOT).as_posix() for p in (ROOT / "split_infer").rglob("*.py")
               if f'"{expected}"' in p.read_text()]
    assert holders == []


def test_config_command_is_registered() -> None:
    assert cli.COMMANDS["config"][0] == "split_infer.config_cli"


def test_check_accepts_the_shipped_examples(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for var in ("SPLIT_INFER_EDGE_TOKEN", "SPLIT_INFER_EDGE_TOKEN_FILE", "SPLIT_INFER_REDIS_PASSWORD",
                "SPLIT_INFER_REDIS_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["config", "check", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert all(f"{p}: ok" in out for p in EXAMPLES)


def test_check_reports_every_problem_with_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPLIT_INFER_TEST_NEVER_SET", raising=False)
    bad = tmp_path / "edge.yaml"
    bad.write_text(BROKEN_EDGE)
    done = run_cli("config", "check", str(ROOT / "deploy/edge/edge.example.yaml"), str(bad))
    assert done.returncode == 2, done.stderr
    assert "edge.example.yaml: ok" in done.stdout
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith(f"{bad}:") and "problem(s)" not in ln]
    assert [int(ln.split(":")[1]) for ln in lines] == [3, 6, 7, 8, 10], done.stderr
    assert "buffer_frames" in lines[0]
    assert "SPLIT_INFER_TEST_NEVER_SET is not set" in lines[1]
    assert "cameras.0.fps" in lines[2] and "cameras.0.colour" in lines[3]
    assert "model.imgsz" in lines[4] and "multiples of 32" in lines[4]
    assert f"{bad}: 5 problem(s)" in done.stderr


def test_check_with_the_variable_set_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("cloud: ingest:50051\ncameras:\n  - id: c1\n    url: ${SPLIT_INFER_TEST_CAM_URL}\n")
    monkeypatch.setenv("SPLIT_INFER_TEST_CAM_URL", "rtsp://cam/stream")
    assert cli.main(["config", "check", str(cfg)]) == 0
    monkeypatch.delenv("SPLIT_INFER_TEST_CAM_URL")
    assert cli.main(["config", "check", str(cfg)]) == 2


@pytest.mark.parametrize(("text", "kind", "needle"), [
    ("cameras: [\n", None, ":2: not valid YAML"),  # a YAML syntax error, with its line
    ("cameras: []\n", None, "give --kind"),  # neither edge-only nor cloud-only keys
    ("- a\n- b\n", "edge", ":1: expected a mapping"),
    ("listen: 0.0.0.0:1\nnode_id: x\n", "cloud", ":2: node_id: Extra inputs"),  # --kind overrides detection
])
def test_check_rejects_unusable_files(tmp_path: Path, capsys, text: str, kind: str | None, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert cli.main(["config", "check", str(cfg), *(["--kind", kind] if kind else [])]) == 2
    assert needle in capsys.readouterr().err


def test_check_never_echoes_a_secret(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("cloud: x:1\ntoken: 987654321\n")  # not a string: an error that would echo it
    assert cli.main(["config", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert ":2: token:" in err and "987654321" not in err


def test_check_missing_file(tmp_path: Path, capsys) -> None:
    assert cli.main(["config", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err


@pytest.mark.parametrize(("kind", "expected"), [
    ("edge", {"node_id", "cloud", "cameras", "model", "codec"}),
    ("cloud", {"redis_url", "listen", "tokens", "cameras", "worker", "ingest"}),
])
def test_schema_per_kind(kind: str, expected: set[str]) -> None:
    done = run_cli("config", "schema", "--kind", kind)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["type"] == "object" and doc["additionalProperties"] is False
    assert expected <= set(doc["properties"])


def test_schema_default_covers_both_kinds(capsys) -> None:
    assert cli.main(["config", "schema"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["anyOf"] == [{"$ref": "#/$defs/EdgeConfig"}, {"$ref": "#/$defs/CloudConfig"}]
    assert {"EdgeConfig", "CloudConfig", "CameraConfig"} <= set(doc["$defs"])


def test_schema_rejects_an_unknown_kind(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["config", "schema", "--kind", "api"])
    assert e.value.code == 2
