"""What every long-running command shares: its command line, logging, stop signals, exit codes.

    def main(argv: list[str] | None = None) -> int:
        return service_main("split-infer cloud worker", __doc__, argv, add_arguments, run,
                            config_help="cloud YAML (CloudConfig)")

`service_main` builds the parser (the service's own flags, plus --config when the service reads
one, --log-level and --log-format), sets up logging once for the whole process, turns SIGTERM
and SIGINT into a `StopEvent` the service watches, and maps the outcome to an exit code:
0 done, 1 runtime failure, 2 usage or configuration error. A configuration error (missing file,
bad YAML, a field pydantic rejects) is one line on stderr: the file, the field, the problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from types import FrameType
from typing import Any, TypeVar

from split_infer.config import ConfigError
from split_infer.redact import RedactingFilter, redact

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's own code for a bad command line; configuration errors share it
EXIT_CODES_EPILOG = "exit status: 0 done, 1 runtime failure, 2 usage or configuration error"

LEVELS = {name: logging.getLevelName(name) for name in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")}
PLAIN_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
LOG_LEVEL_ENV = "LOG_LEVEL"  # the default root level (containers set it without touching the command)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already names it or the option
    is a plain on/off flag. Options whose default is None say in their own words what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or any(action.default is v for v in (None, False, argparse.SUPPRESS)) \
                or action.nargs == 0:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text  # a required positional has no default
        return f"{text} (default: %(default)s)"


def checked(convert: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type=` from a converter that raises ValueError: its message becomes the usage
    error (exit 2), where argparse alone would say only "invalid value"."""

    def check(text: str) -> T:
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    check.__name__ = convert.__name__
    return check


class UsageError(Exception):
    """A command-line value the parser could not check by itself: reported as argparse does, exit 2."""


class StopEvent(threading.Event):
    """Set when the service is asked to stop (SIGTERM, SIGINT). Threaded services wait on it
    directly; asyncio services get a loop-bound mirror from `asyncio_event()`."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()

    def asyncio_event(self) -> asyncio.Event:
        """An asyncio.Event of the running loop that is set when this one is."""
        loop = asyncio.get_running_loop()
        mirror = asyncio.Event()

        def set_mirror() -> None:
            loop.call_soon_threadsafe(mirror.set)

        self._callbacks.append(set_mirror)
        if self.is_set():
            mirror.set()
        return mirror


AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, StopEvent], "int | None"]


# -- logging ---------------------------------------------------------------------------------------


def parse_level(text: str) -> tuple[str, int]:
    """`INFO` (the root logger) or `split_infer.cloud=DEBUG` (one logger and its children)."""
    name, equals, level = (part.strip() for part in text.rpartition("="))
    if level.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {level!r} (choose from {', '.join(LEVELS)})")
    if equals and not name:
        raise argparse.ArgumentTypeError(f"{text!r}: no logger name before '='")
    return name, LEVELS[level.upper()]


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record, for log collectors (Loki, Elasticsearch, CloudWatch)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:  # exc_text: already formatted (and redacted)
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class _ServiceHandler(logging.StreamHandler):
    """The handler `configure_logging` installs, told apart from handlers others added (pytest's)."""


def configure_logging(levels: list[tuple[str, int]], fmt: str = "plain") -> None:
    """The process's one logging set-up: a stderr handler on the root logger, then each
    (logger, level) in order ('' is the root), so that later, narrower settings win."""
    handler = _ServiceHandler(sys.stderr)
    handler.addFilter(RedactingFilter())  # credentials never reach the log (split_infer/redact.py)
    handler.setFormatter(JsonLinesFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(old)  # replace, never add: a second call must not double every line
    root.addHandler(handler)
    for name, level in levels:
        logging.getLogger(name or None).setLevel(level)


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", action="append", type=parse_level, metavar="[LOGGER=]LEVEL",
                        help=f"LEVEL is one of {', '.join(LEVELS)}: the root level (default: ${LOG_LEVEL_ENV} or "
                             "INFO), or one logger's, e.g. split_infer.cloud=DEBUG; repeatable")
    parser.add_argument("--log-format", choices=("plain", "json"), default="plain",
                        help="plain text, or one JSON object per line")


def logging_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Apply --log-level/--log-format (after `add_logging_arguments` and parsing)."""
    try:
        root = parse_level(os.environ.get(LOG_LEVEL_ENV, "INFO"))
    except argparse.ArgumentTypeError as e:
        parser.error(f"${LOG_LEVEL_ENV}: {e}")
    configure_logging([root, *(args.log_level or [])], args.log_format)


# -- the entry point -------------------------------------------------------------------------------


def build_parser(prog: str, description: str | None, config_help: str | None) -> argparse.ArgumentParser:
    summary = description.strip().splitlines()[0] if description and description.strip() else None
    parser = argparse.ArgumentParser(prog=prog, description=summary, formatter_class=HelpFormatter,
                                     epilog=EXIT_CODES_EPILOG)
    if config_help is not None:
        parser.add_argument("--config", help=f"{config_help} (default: built-in defaults)")
    add_logging_arguments(parser)
    return parser


def service_main(prog: str, description: str | None, argv: list[str] | None, add_arguments: AddArguments,
                 run: Run, *, config_help: str | None = None) -> int:
    """Parse, set up logging and signals, call `run(args, stop)`, and turn its outcome into an exit code."""
    parser = build_parser(prog, description, config_help)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging_from_args(parser, args)
    stop = StopEvent()
    previous = _install_stop_handlers(stop)
    try:
        return int(run(args, stop) or EXIT_OK)
    except UsageError as e:
        parser.error(str(e))
    except ConfigError as e:
        print(f"{prog}: {redact(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        log.critical("%s failed", prog, exc_info=True)
        return EXIT_FAILURE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _install_stop_handlers(stop: StopEvent) -> dict[signal.Signals, Any]:
    """SIGTERM and SIGINT set `stop`; returns the handlers they replaced. Signals reach only the
    main thread, so a service started from another thread (tests) keeps the process's handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Event.set takes a lock that the interrupted main thread may be holding: set it from
        # another thread, which waits for that lock instead of deadlocking on it.
        threading.Thread(target=_request_stop, args=(stop, signum), name="stop-request", daemon=True).start()

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}


def _request_stop(stop: StopEvent, signum: int) -> None:
    log.info("%s received: stopping", signal.Signals(signum).name)
    stop.set()
