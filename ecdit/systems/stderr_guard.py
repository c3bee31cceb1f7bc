"""The stderr guard of a process of a multi-process run: one line, instead of a C++ stack trace,
when another process is lost (docs/checkpoints.md, "Stopping, preemption and recovery").

When a process of a `jax.distributed` run dies without warning, the coordination service notices
within its heartbeat timeout and every other process ends itself from a C++ thread: a fatal log
record ("Terminating process because the JAX distributed service detected fatal errors ...")
with the service's status, a stack trace of some 20 lines, and abort() (exit status 134). No
Python code runs in that process any more, so the line has to come from another one: this one.
`distributed.initialize` starts it (`python -P .../stderr_guard.py ...`) and points the process's
stderr (file descriptor 2) at its stdin; it copies everything to the real stderr except

    the coordination service's log records        warnings and notes are dropped ("SIGTERM caught
    (*coordination*, *preemption*, client.h, ...) at ...", the preemption notifier's); errors are
                                                  held back for HOLD_S seconds and passed on unless
                                                  the fatal record follows;
    the fatal record and all after it             dropped; once the process has ended (end of
                                                  input), one line instead:

    ecdit: error: --distributed: process 1 of 2 stopped answering (no heartbeat for 30 s); this
    process (0) stopped too. The last committed step is 400 (runs/x/checkpoint/400): resume
    with the same command once every process can run

The lost process is read from the service's status ("The following tasks are unhealthy (stopped
sending heartbeats): 1", or "Failed to send RPC to coordination service" when the coordinator,
process 0, is gone); the last committed step from the checkpoint directory (a step folder's name
is its number once committed; a save in progress has a temporary name).

It imports only the standard library (it starts in a few tens of milliseconds) and ignores
SIGINT, SIGTERM and SIGHUP (a scheduler that signals every process of a job must not end it
before the process it guards: the process would lose its stderr); it ends when its input ends.
"""
from __future__ import annotations

import argparse
import os
import re
import select
import signal
import sys
import time

HOLD_S = 5.0                                                     # an error record waits this long for the fatal one
# An absl log record's header: severity, date, time, thread, file:line].
RECORD = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([\w.\-]+):\d+\] ")
# The sources of the coordination service's records: its service, agent, RPC client and handler,
# jax's distributed client and service, the preemption notifier and sync manager.
COORDINATION_FILES = {b"client.h", b"client.cc", b"service.cc", b"service.h"}
COORDINATION_WORDS = (b"coordination", b"preemption")
FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
UNHEALTHY = re.compile(rb"stopped sending heartbeats\):\s*((?:[^\n]*\n?){1,8})")
COORDINATOR_GONE = (b"Failed to send RPC to coordination service", b"leader task")


def is_coordination(source: bytes) -> bool:
    """Whether a record's source file is part of the coordination service (or JAX's client of it)."""
    return source in COORDINATION_FILES or any(word in source for word in COORDINATION_WORDS)


def lost_processes(text: bytes) -> list[int] | None:
    """The processes the coordination service's status names as lost; [0] when the coordinator
    itself stopped answering; None when the status says neither."""
    m = UNHEALTHY.search(text)
    if m:
        ids = []
        for line in m.group(1).splitlines():
            if line.strip().startswith(b"The tasks"):
                break
            ids += [int(x) for x in re.findall(rb"task:(\d+)", line) or re.findall(rb"\b(\d+)\b", line)]
        if ids:
            return sorted(set(ids))
    if any(mark in text for mark in COORDINATOR_GONE):
        return [0]
    return None


def committed_steps(directory: str | None) -> list[int]:
    """The committed steps of a checkpoint directory, oldest first (folders named by a number)."""
    if not directory or not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def lost_line(text: bytes, process_id: int, processes: int, heartbeat_s: int, checkpoint_dir: str | None) -> str:
    """The one line that replaces the fatal record and its stack trace."""
    lost = lost_processes(text)
    if lost == [0] and process_id != 0 and UNHEALTHY.search(text) is None:
        what = (f"process 0 of {processes}, the coordinator, is gone (the coordination service stopped "
                f"answering)")
    elif lost:
        names = ", ".join(map(str, lost))
        what = (f"process{'es' if len(lost) > 1 else ''} {names} of {processes} stopped answering (no heartbeat "
                f"for {heartbeat_s} s)")
    else:
        first = text.split(FATAL, 1)[-1].decode(errors="replace").replace("\n", " ").strip(" .")
        what = f"the coordination service reported a failure ({first[:160]})"
    steps = committed_steps(checkpoint_dir)
    if steps:
        kept = (f"the last committed step is {steps[-1]} ({os.path.join(checkpoint_dir, str(steps[-1]))}): resume "
                "with the same command once every process can run")
    elif checkpoint_dir:
        kept = f"no step was committed in {checkpoint_dir}"
    else:
        kept = "nothing was being saved"
    return f"ecdit: error: --distributed: {what}; this process ({process_id}) stopped too. {kept[0].upper() + kept[1:]}"


class Guard:
    """The filter: `feed(chunk)` as the process writes, `tick()` now and then, `end()` at the end of
    input; `out(bytes)` writes to the real stderr."""

    def __init__(self, out, describe):
        self.out, self.describe = out, describe
        self.state = "pass"                                      # pass -> hold -> (pass | fatal)
        self.held = b""
        self.since = 0.0

    def feed(self, chunk: bytes) -> None:
        pieces, last = [], 0
        for m in RECORD.finditer(chunk):                         # split the chunk at every record header
            pieces.append((chunk[last:m.start()], None))
            last = m.start()
            pieces.append((None, m))
        pieces.append((chunk[last:], None))
        record = None
        for text, m in pieces:
            if m is not None:
                record = m
                continue
            if record is None:
                self._plain(text)
            else:
                self._record(record, text)
                record = None

    def _plain(self, text: bytes) -> None:
        if self.state == "pass":
            self.out(text)
        else:
            self.held += text

    def _record(self, m, text: bytes) -> None:
        severity, ours = text[:1], is_coordination(m.group(1))
        if self.state == "fatal":
            self.held += text
        elif ours and (severity == b"F" or FATAL in text):
            self.state, self.held = "fatal", self.held + text
        elif ours and severity == b"E":
            if self.state == "pass":
                self.state, self.since = "hold", time.monotonic()
            self.held += text
        elif ours:                                               # a warning or note, with its continuation
            pass                                                 # lines (up to the next record): dropped
        else:
            self._plain(text)

    def tick(self) -> None:
        """An error record not followed by the fatal one within HOLD_S is passed on after all."""
        if self.state == "hold" and time.monotonic() - self.since > HOLD_S:
            self.out(self.held)
            self.state, self.held = "pass", b""

    def end(self) -> None:
        if self.state == "fatal":
            self.out((self.describe(self.held) + "\n").encode())
        else:
            self.out(self.held)
        self.held = b""


def main(argv=None) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--processes", type=int, required=True)
    ap.add_argument("--heartbeat", type=int, required=True, help="the heartbeat timeout, seconds")
    ap.add_argument("--checkpoint-dir", default=None)
    a = ap.parse_args(argv)

    def out(data: bytes) -> None:
        while data:
            data = data[os.write(1, data):]

    guard = Guard(out, lambda text: lost_line(text, a.process_id, a.processes, a.heartbeat, a.checkpoint_dir))
    while True:
        ready, _, _ = select.select([0], [], [], 0.5)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            try:
                guard.feed(chunk)
            except Exception:                                    # noqa: BLE001 (never lose the process's output)
                out(guard.held + chunk)
                guard.state, guard.held = "pass", b""
        guard.tick()
    guard.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
