"""What a build of fastrnn._C by setup.py did, told while it runs and kept afterwards.

pip hides everything a build prints unless it runs with -v, so setup.py's build runs inside report():
the compiler's output (ninja's, on file descriptor 1) is copied into a log file as well as passed on,
a line per compiled source goes to the terminal (/dev/tty) when there is one, and the outcome is kept
as JSON beside the log, which fastrnn.explain() shows. Imports nothing from fastrnn, so setup.py can
load it alone."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "build" / "fastrnn-build.log"
RECORD = LOG.with_suffix(".json")

_COMPILED = re.compile(r"^\[(\d+)/(\d+)\] .* -c (\S+)")  # ninja -v: "[k/n] <command> ... -c <source> -o ..."


def _terminal():
    """The terminal this build runs in, past pip's capture of its output; None in CI or when piped."""
    try:
        return open("/dev/tty", "w", buffering=1)
    except OSError:
        return None


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class _Report:
    def __init__(self, what: str, sources: int, build_dir: str):
        self.what, self.sources, self.build_dir = what, sources, build_dir
        self.start = time.monotonic()
        self.compiled = 0
        self.log = open(LOG, "w", buffering=1)
        # Under pip stderr is captured and the terminal is reached directly; a plain setup.py run in a
        # terminal already shows stderr there.
        self.terminal = sys.stderr if sys.stderr.isatty() else _terminal()
        self.told_terminal = False
        self.lock = threading.Lock()  # say() runs in the build's thread, compiler_line() in the copier's

    def _tell(self, message: str, stderr: bool) -> None:
        line = f"fastrnn setup: {message}"
        with self.lock:
            print(line, file=self.log, flush=True)
            if stderr and self.terminal is not sys.stderr:
                print(line, file=sys.stderr, flush=True)
            if self.terminal is not None:
                # pip's spinner shares the terminal: the first line starts below pip's "Building ... -",
                # each later one first clears the spinner character left at the start of its line.
                start = "\r\033[K" if self.told_terminal else "\n"
                print(start + line, file=self.terminal, flush=True)
                self.told_terminal = True

    def say(self, message: str) -> None:
        """One line to the log, to stderr (shown by pip -v and plain setup.py runs) and to the terminal."""
        self._tell(message, stderr=True)

    def compiler_line(self, line: str) -> None:
        with self.lock:
            self.log.write(line)
        found = _COMPILED.match(line)
        if found:  # the whole command line is passed on to stdout; the terminal gets the short form
            self.compiled += 1
            source = os.path.relpath(found.group(3), ROOT)
            self._tell(f"[{found.group(1)}/{found.group(2)}] compiled {source} "
                       f"(at {_minutes(time.monotonic() - self.start)})", stderr=False)

    def finish(self, ok: bool) -> dict:
        seconds = time.monotonic() - self.start
        reused = self.sources - self.compiled
        record = {
            "built": self.what, "ok": ok, "seconds": round(seconds, 1), "sources": self.sources,
            "compiled": self.compiled, "build_dir": self.build_dir, "log": str(LOG),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        if ok:
            self.say(f"built in {_minutes(seconds)}: compiled {self.compiled} of {self.sources} sources, "
                     f"reused {reused} from {self.build_dir}; log: {LOG}")
        else:
            self.say(f"the build failed after {_minutes(seconds)}; the compiler's output is above and in {LOG}")
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
        self.log.close()
        if self.terminal not in (None, sys.stderr):
            self.terminal.close()
        return record


@contextlib.contextmanager
def report(what: str, sources: int, build_dir: str):
    """Runs a build: says `what` it builds, copies what is written to file descriptor 1 (where torch runs
    ninja and the compilers) into the log while passing it on, reports each compiled source, and at
    the end records the outcome. Yields the report, whose say() adds a line."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    progress = _Report(what, sources, build_dir)
    progress.say(f"building {what}")
    sys.stdout.flush()
    passed_on = os.dup(1)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)

    def copy() -> None:
        with os.fdopen(read_end, "r", errors="replace") as lines, os.fdopen(passed_on, "w") as out:
            for line in lines:
                out.write(line)
                out.flush()
                progress.compiler_line(line)

    copier = threading.Thread(target=copy, daemon=True)
    copier.start()
    ok = False
    try:
        yield progress
        ok = True
    finally:
        sys.stdout.flush()
        restored = os.dup(passed_on)
        os.dup2(restored, 1)  # closes the pipe's last write end: the copier reads to the end and stops
        os.close(restored)
        copier.join()
        progress.finish(ok)


def last_build() -> dict | None:
    """The record of the latest build of fastrnn._C in this source tree, or None."""
    try:
        return json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None


def summary() -> str | None:
    """One line on the latest build in this source tree, for explain(); None when there is no record."""
    record = last_build()
    if record is None:
        return None
    if not record.get("ok"):
        return f"the latest build ({record['date']}) failed; log: {record['log']}"
    reused = record["sources"] - record["compiled"]
    return (f"{record['built']}; built {record['date']} in {_minutes(record['seconds'])}, compiling "
            f"{record['compiled']} of {record['sources']} sources ({reused} reused from {record['build_dir']}); "
            f"log: {record['log']}")
