"""The `split-infer` command line (issue 13, "CLI"): every flag documented with its default, enumerated
values checked, and the documented exit codes (0 done, 1 runtime failure, 2 usage or configuration
error; docs/cli.md)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from split_infer import cli
from split_infer.service import EXIT_FAILURE, EXIT_USAGE
from support.data import ROOT, street_video, yolov5s_ready

pytestmark = pytest.mark.unit

# Each entry: the arguments that reach the sub-command's own parser.
COMMANDS = [[name] for name in cli.COMMANDS if name != "cloud"] + [["cloud", "ingest"], ["cloud", "worker"]]


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a sub-command builds, caught at its first parse (nothing runs)."""
    def capture(self: argparse.ArgumentParser, *_: object, **__: object) -> None:
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Captured) as caught:
        cli.main([*argv, "--help"])
    monkeypatch.undo()
    return caught.value.parser


def walk(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, argparse.Action]]:
    """Every argument of a parser and of its sub-parsers (weights pull, config check, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield parser, action


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_option_has_help_and_shows_its_default(argv, monkeypatch):
    parser = parser_of(argv, monkeypatch)
    problems = []
    for owner, action in walk(parser):
        name = "/".join(action.option_strings) or action.dest
        if action.help == argparse.SUPPRESS:
            continue  # a removed flag that only explains itself (edge --token)
        if not action.help:
            problems.append(f"{owner.prog} {name}: no help")
            continue
        shown = owner._get_formatter()._expand_help(action)
        takes_value = action.nargs != 0
        required_positional = not action.option_strings and action.nargs not in ("?", "*")
        if takes_value and not required_positional and not action.required and "default" not in shown.lower():
            problems.append(f"{owner.prog} {name}: help does not show the default: {shown!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_subcommand_help_works(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: split-infer") and "--help" in out


def test_top_level_help_lists_commands_and_exit_codes(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
    assert "exit status: 0 done, 1 runtime failure, 2 usage or configuration error" in out


@pytest.mark.parametrize("argv", [["api"], ["edge"], ["analytics"], ["cloud", "worker"], ["detect", "x.jpg"]],
                         ids=" ".join)
def test_bad_log_level_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--log-level", "LOUD"])
    assert done.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument --log-level: unknown log level 'LOUD'" in err and "DEBUG" in err, err


@pytest.mark.parametrize("argv", [
    [],  # no command
    ["cloud"],  # no service
    ["nosuch"],  # no such command
    ["edge", "--frames", "many"],  # not a number
    ["api", "--log-format", "xml"],  # not one of the choices
    ["detect", "x.jpg", "--head-runtime", "tpu"],
    ["detect", "x.jpg", "--imgsz", "640x"],  # WIDTHxHEIGHT
    ["export", "--imgsz", "641x384"],  # not multiples of 32
    ["weights", "pull", "yolov9000"],
    ["cloud", "nosuch"],
], ids=lambda argv: " ".join(argv) or "(none)")
def test_usage_errors_exit_2(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.strip(), "a usage error says what is wrong"
    if "--imgsz" in argv:
        assert "must be WIDTHxHEIGHT in positive multiples of 32" in err, err


def run_edge(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "split_infer", "edge", "--config", str(config), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_edge_without_an_exported_model_is_a_configuration_error(tmp_path):
    config = tmp_path / "edge.yaml"
    config.write_text(f"model_dir: {tmp_path / 'nope'}\ncameras: [{{id: c, url: /x.mp4}}]\n")
    done = run_edge(config)
    assert done.returncode == EXIT_USAGE, done.stderr[-2000:]
    assert "no exported edge model" in done.stderr and "split-infer export" in done.stderr


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    from split_infer.model.export import export_edge

    yolov5s_ready()
    return export_edge("yolov5s", 4, (320, 192), tmp_path_factory.mktemp("ir"))


@pytest.mark.e2e
def test_edge_that_never_reaches_the_ingest_exits_1(ir_dir, tmp_path):
    """Nothing listens on the discard port: every frame stays undelivered, and the exit says so."""
    config = tmp_path / "edge.yaml"
    config.write_text(f"cloud: 127.0.0.1:9\ntls: {{insecure: true}}\nmodel_dir: {ir_dir}\nprecision: f32\n"
                      "model: {name: yolov5s, cut: 4, imgsz: [320, 192]}\n"
                      f"cameras: [{{id: c1, url: {street_video()}, loop: true, fps: 5}}]\n")
    done = run_edge(config, "--duration", "4", "--drain-timeout", "1")
    assert done.returncode == EXIT_FAILURE, done.stderr[-3000:]
    assert "undelivered" in done.stderr and "127.0.0.1:9" in done.stderr, done.stderr[-3000:]


@pytest.mark.e2e
def test_edge_whose_cameras_never_deliver_exits_1(ir_dir, tmp_path):
    config = tmp_path / "edge.yaml"
    config.write_text(f"cloud: 127.0.0.1:9\ntls: {{insecure: true}}\nmodel_dir: {ir_dir}\nprecision: f32\n"
                      "model: {name: yolov5s, cut: 4, imgsz: [320, 192]}\n"
                      f"cameras: [{{id: c1, url: {tmp_path / 'missing.mp4'}}}]\n")
    done = run_edge(config, "--duration", "4", "--drain-timeout", "1")
    assert done.returncode == EXIT_FAILURE, done.stderr[-3000:]
    assert "no camera delivered a frame" in done.stderr, done.stderr[-3000:]


def test_known_third_party_warnings_are_dropped_and_others_are_one_log_line():
    code = ("import warnings\n"
            "from split_infer import cli\n"
            "cli.quiet_warnings()\n"
            "warnings.warn_explicit('`torch.jit.trace` is deprecated. Please switch to `torch.compile`', FutureWarning,"
            " '/site-packages/torch/jit/_trace.py', 1006, module='torch.jit._trace')\n"
            "warnings.warn('something else', UserWarning)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UserWarning: something else ("), done.stderr


def test_progress_goes_to_stderr_only_and_only_when_asked(capsys):
    from split_infer.progress import bar

    with bar("quiet", 3) as progress:  # stderr is captured here, not a terminal: no bar
        progress.advance()
    assert capsys.readouterr() == ("", "")
    with bar("shown", 3, forced=True) as progress:
        progress.stage("counting", 3)
        for _ in range(3):
            progress.advance()
    out, err = capsys.readouterr()
    assert out == "" and err, "a forced bar draws on stderr, never on stdout"


@pytest.mark.e2e
def test_weights_pull_with_progress_prints_only_the_path_on_stdout():
    yolov5s_ready()
    done = subprocess.run([sys.executable, "-m", "split_infer", "weights", "pull", "yolov5s", "--progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("yolov5s.npz") and len(done.stdout.strip().splitlines()) == 1, done.stdout


def test_a_command_whose_extra_is_missing_names_the_extra():
    """An API-only host has no torch: `split-infer export` says which extra it needs, and exits 1."""
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from split_infer import cli\n"
            "sys.exit(cli.main(['export', '--imgsz', '320x192', '--out', 'unused']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == EXIT_FAILURE, done.stderr[-2000:]
    assert "torch is not installed" in done.stderr and "split-infer[export]" in done.stderr, done.stderr[-2000:]
