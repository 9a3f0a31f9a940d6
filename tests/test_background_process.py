"""The background command the Slicer panels run: the end of a job, and Cancel/Stop on the whole process tree.

Slicer starts the command through ``PythonSlicer``, a launcher that runs ``python-real`` as a child and
forwards no signal. ``launcher.py`` below behaves the same way: it starts the real Python as a child,
waits for it, and dies on SIGTERM without passing it on.
"""
import sys
import textwrap
import time

import psutil
import pytest

from DeepRegistrationLib.background import BackgroundCommand

LAUNCHER = textwrap.dedent(f"""\
    #!{sys.executable}
    import subprocess, sys
    sys.exit(subprocess.call([{sys.executable!r}, *sys.argv[1:]]))
""")


@pytest.fixture
def launcher(tmp_path):
    path = tmp_path / "PythonSlicer"
    path.write_text(LAUNCHER)
    path.chmod(0o755)
    return str(path)


def test_a_job_is_read_to_the_end_of_its_output(tmp_path):
    """The child prints a lot, then ``done``, and exits at once: the end of the job is decided at the end
    of its output, so the ``done`` event is never lost even though the process has exited first."""
    child = tmp_path / "child"
    child.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""\
        import sys
        sys.stdout.write("log line\\n" * 20000)
        sys.stdout.buffer.write(b"undecodable \\xff\\xfe bytes\\n")
        sys.stdout.write('{"event": "done", "outputs": {"transform": "t.h5"}}\\n')
    """))
    child.chmod(0o755)
    for _ in range(5):
        job = BackgroundCommand([], str(child)).start()
        events = []
        while True:                      # what the panel's timer does
            finished = job.finished      # read before draining, as the panel does
            events += job.events()
            if finished:
                break
            time.sleep(0.001)
        assert job.returncode == 0
        assert events[-1] == {"event": "done", "outputs": {"transform": "t.h5"}}
        assert len(job.log) == 20001 and "\ufffd" in job.log[-1]


def _tree(pid):
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def test_stop_kills_the_tree_and_the_training_writes_its_checkpoint(tmp_path, launcher):
    """Stop on a training run started through a non-forwarding launcher: the trainer (the launcher's
    child) gets SIGTERM, writes its checkpoint, and no process of the tree is left."""
    out = tmp_path / "dirnet.pt"
    job = BackgroundCommand(["train-dirnet", "--synthetic", "spm-avg152-t1", "--out", out, "--epochs", "1",
                             "--steps-per-epoch", "100000", "--size", "32,32", "--spacing-mm", "4,4",
                             "--downsamplings", "2", "--batch-size", "2", "--checkpoint-every", "100000",
                             "--device", "cpu", "--progress-json"], launcher).start()
    steps = []
    deadline = time.time() + 120
    while len(steps) < 3 and time.time() < deadline:
        steps += [e for e in job.events() if e.get("event") == "step"]
        time.sleep(0.1)
    assert len(steps) >= 3, job.error_message()
    tree = _tree(job.process.pid)
    assert len(tree) == 2, "the launcher and the trainer"
    job.cancel()
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    checkpoints = list((tmp_path / "dirnet_checkpoints").glob("*"))
    assert checkpoints, "SIGTERM did not make the trainer write its checkpoint"
    assert not out.exists()
    assert job.finished


class ScriptCommand(BackgroundCommand):
    """A background command that runs a script instead of the CLI (through the same launcher)."""

    def __init__(self, script, python):
        super().__init__([], python)
        self.script = str(script)

    @property
    def command_line(self):
        return [self.python, self.script]


def test_cancel_kills_a_grandchild_that_ignores_sigterm(tmp_path, launcher):
    """A child that ignores SIGTERM and starts a grandchild: after ``timeout`` everything is killed."""
    script = tmp_path / "stubborn.py"
    script.write_text(textwrap.dedent(f"""\
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([{sys.executable!r}, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        print("started", flush=True)
        time.sleep(600)
    """))
    job = ScriptCommand(script, launcher).start()
    deadline = time.time() + 30
    while len(_tree(job.process.pid)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    tree = _tree(job.process.pid)
    assert len(tree) == 3, "launcher, child, grandchild"
    started = time.time()
    job.cancel(timeout=1.0)
    assert time.time() - started < 10
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
