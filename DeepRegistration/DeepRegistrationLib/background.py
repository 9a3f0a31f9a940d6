"""Long work in a separate process so that a GUI stays responsive (used by the Slicer modules).

``BackgroundCommand`` runs ``python -m DeepRegistrationLib.cli ...`` with ``--progress-json``; a reader
thread collects the JSON lines, and the GUI polls :meth:`BackgroundCommand.events` from a timer.

- A job has ended when the reader has reached the end of the command's output (:attr:`finished`),
  not when the process has exited: the last lines (``done`` and its outputs) may still be unread then.
- Slicer's ``PythonSlicer`` is a launcher that runs ``python-real`` as a child and forwards no signal,
  so :meth:`cancel` signals the whole process tree (psutil), children first. SIGTERM lets a training
  run write its checkpoint (``training.common.StepLoop``); what is still alive after ``timeout`` is killed.
- The command writes its outputs atomically, so a cancelled run leaves none behind.
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
    def __init__(self, arguments: list, python: str = None, environment: dict = None):
        """``environment``: the child's environment (Slicer passes ``slicer.util.startupEnvironment()``,
        not its own ``os.environ``); by default this process's."""
        self.arguments = [str(a) for a in arguments]
        self.python = python or sys.executable
        self.environment = dict(os.environ if environment is None else environment)
        self.process = None
        self._events = queue.Queue()
        self._eof = threading.Event()
        self.log = []
        self._log_shown = 0

    @property
    def command_line(self) -> list:
        return [self.python, "-m", "DeepRegistrationLib.cli", *self.arguments]

    def start(self) -> "BackgroundCommand":
        env = self.environment
        env["PYTHONPATH"] = os.pathsep.join([LIBRARY_PARENT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        hidden = {}
        if os.name == "nt":
            info = subprocess.STARTUPINFO()
            info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
            info.wShowWindow = 0
            hidden = {"startupinfo": info, "creationflags": subprocess.CREATE_NO_WINDOW}
        self.process = subprocess.Popen(self.command_line, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, **hidden)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    event = None
                if isinstance(event, dict):
                    self._events.put(event)
                else:
                    self.log.append(line)
        finally:
            self._eof.set()

    def new_log_lines(self) -> list:
        """Output lines that are not JSON events, received since the last call (for a log view)."""
        lines = self.log[self._log_shown:]
        self._log_shown += len(lines)
        return lines

    def events(self) -> list:
        """Events received since the last call (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    @property
    def finished(self) -> bool:
        """The whole output has been read and the process has exited (its events are all queued)."""
        return self._eof.is_set() and self.process.poll() is not None

    @property
    def running(self) -> bool:
        return self.process is not None and not self.finished

    @property
    def returncode(self):
        return None if self.process is None else self.process.poll()

    def error_message(self) -> str:
        """What the command said on failure (its last lines that are not progress)."""
        return "\n".join(self.log[-5:]) or f"the command exited with status {self.returncode}"

    def cancel(self, timeout: float = 30.0) -> None:
        """Terminate the process and every process it started (SIGTERM, then SIGKILL after ``timeout`` s)."""
        import psutil
        if self.process is None or self.process.poll() is not None:
            self._eof.wait(5)
            return   # already ended (and reaped: its pid may belong to another process by now)
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)[::-1]
        except psutil.NoSuchProcess:
            descendants = []
        for process in descendants:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        self.process.terminate()
        # descendants are polled by psutil; the direct child is reaped by Popen only (else its status is lost)
        _, alive = psutil.wait_procs(descendants, timeout=timeout)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self._eof.wait(5)

    def wait(self, timeout: float = None) -> int:
        """Wait for the process to exit and its output to be read to the end."""
        code = self.process.wait(timeout)
        self._eof.wait(timeout)
        return code


class CommandSequence:
    """Background commands run one after another (e.g. a rigid stage, then a deformable one started from
    its result), seen as one job: progress fractions are scaled to the whole, the last stage's ``done``
    event gives :attr:`outputs`, and a stage that fails ends the sequence."""

    def __init__(self, stages: list, python: str = None, environment: dict = None):
        self.stages = stages
        self.python, self.environment = python, environment
        self.index = 0
        self.current = None
        self.outputs = {}

    def start(self) -> "CommandSequence":
        self.current = BackgroundCommand(self.stages[self.index], self.python, self.environment).start()
        return self

    def events(self) -> list:
        out = []
        stage_finished = self.current.finished  # before draining: all of a finished stage's events are queued
        for event in self.current.events():
            if "fraction" in event:
                event = dict(event, fraction=(self.index + float(event["fraction"])) / len(self.stages))
            if event.get("event") == "done":
                if self.index < len(self.stages) - 1:
                    continue
                self.outputs = event.get("outputs", {})
            out.append(event)
        if stage_finished and self.current.returncode == 0 and self.index < len(self.stages) - 1:
            self.index += 1
            self.start()
        return out

    @property
    def finished(self) -> bool:
        return self.current.finished and (self.current.returncode != 0 or self.index == len(self.stages) - 1)

    @property
    def returncode(self):
        return self.current.returncode

    def new_log_lines(self) -> list:
        return self.current.new_log_lines()

    def error_message(self) -> str:
        return self.current.error_message()

    def cancel(self, timeout: float = 30.0) -> None:
        self.current.cancel(timeout)
        self.index = len(self.stages) - 1

    def wait(self, timeout: float = None) -> int:
        """Run every stage to its end (blocking); returns the last exit status."""
        while True:
            code = self.current.wait(timeout)
            self.events()
            if self.finished:
                return code
