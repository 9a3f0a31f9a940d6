"""Long work in a separate process so that a GUI stays responsive (used by the Slicer modules).

``BackgroundCommand`` runs ``python -m DeepRegistrationLib.cli ...`` with ``--progress-json``; a reader
thread collects the JSON lines, and the GUI polls :meth:`BackgroundCommand.events` from a timer.
Cancelling terminates the process; the command writes its outputs atomically, so a cancelled run
leaves none behind.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

LIBRARY_PARENT = str(Path(__file__).resolve().parent.parent)


class BackgroundCommand:
    def __init__(self, arguments: list, python: str = None):
        self.arguments = [str(a) for a in arguments]
        self.python = python or sys.executable
        self.process = None
        self._events = queue.Queue()
        self.log = []

    @property
    def command_line(self) -> list:
        return [self.python, "-m", "DeepRegistrationLib.cli", *self.arguments]

    def start(self) -> "BackgroundCommand":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([LIBRARY_PARENT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(self.command_line, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.log.append(line)
                continue
            if isinstance(event, dict):
                self._events.put(event)
            else:
                self.log.append(line)

    def events(self) -> list:
        """Events received since the last call (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self):
        return None if self.process is None else self.process.poll()

    def error_message(self) -> str:
        """What the command said on failure (its last lines that are not progress)."""
        return "\n".join(self.log[-5:]) or f"the command exited with status {self.returncode}"

    def cancel(self, timeout: float = 10.0) -> None:
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait(self, timeout: float = None) -> int:
        return self.process.wait(timeout)
