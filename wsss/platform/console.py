"""What a user sees while a job runs, and the complete log kept beside its results.

Every line the platform has for a user goes through the `wsss` logger. In a command
(`capture_console`), the console shows those lines only, and a log file receives everything
the process writes: Ray's own lines (its core workers write errors of no consequence to a user
straight to the file descriptors), warnings of the libraries, the lines Ray forwards from its
workers, and the `wsss` lines with timestamps.

Ray workers are other processes: `setup_worker_logging` (Ray's `worker_process_setup_hook`)
prefixes their `wsss` lines with `WORKER_PREFIX`, and the driver shows the forwarded lines
that carry it, so a training epoch logged in a Ray Train worker reaches the console as it
would from the driver.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

LOGGER_NAME = "wsss"
WORKER_PREFIX = "wsss:"
_WORKER_LINE = re.compile(rf"{re.escape(WORKER_PREFIX)}(?P<level>[A-Z]+) (?P<message>.*)")
# Ray's stdout dispatcher names its handlers; this one shows forwarded `wsss` worker lines.
_DISPATCH_HANDLER = "wsss_console"

logger = logging.getLogger(LOGGER_NAME)


def format_duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on, for durations >= 0 (rounded to the second)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_text(elapsed: float, done: float, total: float) -> str:
    """`0:42 elapsed, ~1:03 left` at a constant rate; no estimate before anything is done."""
    text = f"{format_duration(elapsed)} elapsed"
    if 0 < done < total:
        text += f", ~{format_duration(elapsed * (total - done) / done)} left"
    return text


class Progress:
    """Counted progress lines for a long stage: `[step1] CAMs 460/1150 images (40%), 0:42
    elapsed, ~1:03 left`.

    A line is logged whenever the count crosses another `every` share of the total, or
    `min_interval_s` after the last line, and once when the stage ends (`finish`).
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "images",
        every: float = 0.25,
        min_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.every, self.min_interval_s, self.clock = every, min_interval_s, clock
        self.done = 0
        self.started = self.last_shown = clock()
        self._shown_step = 0

    def update(self, count: int) -> None:
        """Add `count` finished items; log a line if one is due."""
        self.done += count
        now = self.clock()
        step = math.floor(self.done / max(1, self.total) / self.every)
        if self.done < self.total and (
            step > self._shown_step or now - self.last_shown >= self.min_interval_s
        ):
            self._shown_step, self.last_shown = step, now
            share = f" ({100 * self.done / max(1, self.total):.0f}%)"
            elapsed = eta_text(now - self.started, self.done, self.total)
            logger.info(f"{self.label} {self.done}/{self.total} {self.unit}{share}, {elapsed}")

    def finish(self) -> None:
        elapsed = format_duration(self.clock() - self.started)
        logger.info(f"{self.label} {self.done}/{self.total} {self.unit} in {elapsed}")


def root_cause(error: BaseException) -> BaseException:
    """The error that started it all: Ray's wrappers (a task's `cause`, a training run's
    worker failures, a controller's failure) and explicit `raise ... from` chains unwrapped,
    up to the first error of wsss's own, whose message already says what happened and what
    to do (the library error under it is in the log)."""
    seen: set[int] = set()
    while id(error) not in seen and not type(error).__module__.startswith("wsss."):
        seen.add(id(error))
        inner = (
            getattr(error, "cause", None)
            or next(iter(getattr(error, "worker_failures", {}).values()), None)
            or getattr(error, "controller_failure", None)
            or error.__cause__
        )
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def describe_error(error: BaseException, limit: int = 400) -> str:
    """`Type: message` of `error`'s root cause, on one line, without Ray's traceback text."""
    cause = root_cause(error)
    lines = [line for line in str(cause).splitlines() if line.strip()]
    # Ray's wrapped errors print their traceback first; the message is the last line.
    message = lines[-1] if lines and "Traceback" in str(cause) else " ".join(lines)
    text = f"{type(cause).__name__}: {message}" if message else type(cause).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def setup_worker_logging() -> None:
    """Ray's `worker_process_setup_hook`: `wsss` lines of a worker go to its stderr with
    `WORKER_PREFIX`, which Ray forwards to the driver (and `forward_worker_lines` shows)."""
    if any(getattr(h, "wsss_worker", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{WORKER_PREFIX}%(levelname)s %(message)s"))
    handler.wsss_worker = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def forward_worker_lines(data: dict[str, Any]) -> None:
    """Ray stdout-dispatcher handler: log the forwarded lines that carry `WORKER_PREFIX`.

    The records are marked `forwarded`: Ray's own handler already wrote the raw line where the
    process's output goes, so a log file needs them no second time.
    """
    for line in data.get("lines", ()):
        match = _WORKER_LINE.search(line)
        if match:
            level = logging.getLevelName(match["level"])
            logger.log(
                level if isinstance(level, int) else logging.INFO,
                match["message"],
                extra={"forwarded": True},
            )


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


def _not_forwarded(record: logging.LogRecord) -> bool:
    return not getattr(record, "forwarded", False)


class _LogStream(io.TextIOBase):
    """The log file as the process's stdout and stderr; a write that fails (a full disk) is
    said once on the screen and the log is given up, so that the console, and the error a
    user must see, go on."""

    def __init__(self, file: TextIO, screen: TextIO) -> None:
        self.file, self.screen, self.failed = file, screen, False

    def _guarded(self, action: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            action()
        except OSError as exc:
            self.failed = True
            self.screen.write(f"wsss: the log {self.file.name} cannot be written ({exc})\n")

    def write(self, text: str) -> int:
        self._guarded(lambda: self.file.write(text))
        return len(text)

    def flush(self) -> None:
        if not self.file.closed:
            self._guarded(self.file.flush)

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def encoding(self) -> str:
        return self.file.encoding

    def __getattr__(self, name: str) -> Any:  # what else a stream has (errors, buffer, ...)
        if name == "file":  # not set yet
            raise AttributeError(name)
        return getattr(self.file, name)

    def close(self) -> None:
        self._guarded(self.file.close)
        if self.failed:
            with contextlib.suppress(OSError):
                self.file.close()
        super().close()


@contextmanager
def capture_console(log_file: Path, console: TextIO | None = None) -> Iterator[TextIO]:
    """For the duration of the block, the console shows `wsss` lines only and `log_file`
    (appended to) receives everything the process writes. Yields the console stream, for
    what the command itself prints.

    Python's `sys.stdout` and `sys.stderr`, and file descriptors 1 and 2 under them, point
    at the log file inside the block, so output written below Python (Ray's C++ core) lands
    there too; the console is a copy of the original stdout.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    log_file.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    saved_streams = sys.stdout, sys.stderr
    screen = console or os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with _LogStream(log_file.open("a", buffering=1), screen) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        on_screen = logging.StreamHandler(screen)
        on_screen.setFormatter(_ConsoleFormatter())
        in_file = logging.StreamHandler(log)
        in_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        in_file.addFilter(_not_forwarded)
        previous = (logger.level, logger.propagate)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(on_screen)
        logger.addHandler(in_file)
        global_worker_stdstream_dispatcher.add_handler(_DISPATCH_HANDLER, forward_worker_lines)
        try:
            yield screen
        finally:
            global_worker_stdstream_dispatcher.remove_handler(_DISPATCH_HANDLER)
            logger.removeHandler(on_screen)
            logger.removeHandler(in_file)
            logger.setLevel(previous[0])
            logger.propagate = previous[1]
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            sys.stdout, sys.stderr = saved_streams
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if console is None:
                screen.close()


def show_on_console(stream: TextIO | None = None) -> None:
    """Show `wsss` lines on `stream` (default stdout) and capture nothing: for scripts
    (benchmarks) that leave Ray's output, forwarded worker lines included, on their terminal."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_ConsoleFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once: libraries may have given the root logger a handler too
