"""Triton's repository load and unload, applied by every serving process of a node.

With ``--processes N`` a RepositoryModelLoad or RepositoryModelUnload reaches the one
serving process the kernel gave the client's connection to. That process appends the
request to a **control log** in the supervisor's private directory (one file per command,
``cmd-<seq>.json``, created exclusively, so two processes never take the same number) and
applies the log in order; each sibling follows the log (every ``FOLLOW_S``), applies new
commands in the same order and records how far it got and what each command refused in
``ack-<index>.json``. The receiving process answers once every sibling has applied the
command, or with an error naming the processes that refused it or did not apply it within
``ACK_TIMEOUT_S``. A process that restarts catches up before it serves (it unloads the
models whose newest command is an unload), so a model unloaded by request stays unloaded
in every process.

A lone node (no control directory) applies the request itself, as before.

Commands are ``{"seq": int, "op": "load" | "unload", "model": str, "force": bool}``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_node.errors import EdgeNodeError, RepositoryControlError
from edge_node.hotswap import ModelManager

log = logging.getLogger(__name__)

FOLLOW_S = 0.1  # how often a serving process looks for commands of its siblings
ACK_TIMEOUT_S = 30.0  # how long the receiving process waits for its siblings
KEPT_RESULTS = 64  # results of the newest commands kept in an ack file


@dataclass(frozen=True)
class Command:
    """One load or unload, numbered in log order."""

    seq: int
    op: str  # "load" or "unload"
    model: str
    force: bool = False

    def describe(self) -> str:
        """``load mnist_edge`` (with `` (force)`` when forced)."""
        return f"{self.op} {self.model}" + (" (force)" if self.force else "")


class ControlLog:
    """The command and acknowledgement files of one node's serving processes in
    ``directory``; this process is ``index`` of ``count``."""

    def __init__(self, directory: Path, index: int, count: int):
        self.directory = Path(directory)
        self.index = index
        self.count = count

    def append(self, op: str, model: str, force: bool = False) -> Command:
        """Add a command after the newest one; returns it with its number."""
        while True:
            seq = self.newest() + 1
            command = Command(seq, op, model, force)
            path = self.directory / f"cmd-{seq:08d}.json"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # a sibling took this number: take the next
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"seq": seq, "op": op, "model": model, "force": force}, fh)
            return command

    def newest(self) -> int:
        """The number of the newest command (0: none)."""
        return max((int(p.stem[4:]) for p in self.directory.glob("cmd-*.json")), default=0)

    def after(self, seq: int) -> list[Command]:
        """Commands numbered above ``seq``, in order. A command file still being written
        (created, not yet filled) ends the list there: it is read on the next call."""
        numbers = sorted(n for p in self.directory.glob("cmd-*.json")
                         if (n := int(p.stem[4:])) > seq)
        commands = []
        for n in numbers:
            try:
                fields = json.loads((self.directory / f"cmd-{n:08d}.json").read_text())
            except (OSError, ValueError):
                break
            commands.append(Command(int(fields["seq"]), str(fields["op"]),
                                    str(fields["model"]), bool(fields.get("force", False))))
        return commands

    def acknowledge(self, seq: int, results: dict[int, str]) -> None:
        """Record that this process applied every command up to ``seq``; ``results``
        maps a command's number to what it refused ("" when it applied cleanly)."""
        path = self.directory / f"ack-{self.index}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"seq": seq, "results": {str(n): r for n, r in results.items()}}))
        os.replace(tmp, path)

    def acknowledgement(self, index: int) -> tuple[int, dict[int, str]]:
        """How far process ``index`` got and its kept results ((0, {}) before its first)."""
        try:
            fields = json.loads((self.directory / f"ack-{index}.json").read_text())
        except (OSError, ValueError):
            return 0, {}
        return int(fields["seq"]), {int(k): str(v) for k, v in fields["results"].items()}

    def wait_for_siblings(self, seq: int, timeout: float) -> tuple[dict[int, str], list[int]]:
        """Wait until every other process applied command ``seq``; returns ``(refused,
        late)``: what each sibling refused of it (by process index, only those that did)
        and the siblings that had not applied it after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        waiting = [i for i in range(self.count) if i != self.index]
        refused: dict[int, str] = {}
        while waiting:
            for index in list(waiting):
                applied, results = self.acknowledgement(index)
                if applied >= seq:
                    waiting.remove(index)
                    if results.get(seq):
                        refused[index] = results[seq]
            if waiting and time.monotonic() >= deadline:
                break
            if waiting:
                time.sleep(0.02)
        return refused, waiting


class RepositoryControl:
    """Loads and unloads models in this serving process and, through ``log`` (None: a
    lone node), in its siblings."""

    def __init__(self, models: ModelManager, log_: ControlLog | None = None,
                 ack_timeout: float = ACK_TIMEOUT_S):
        self.models = models
        self.log = log_
        self.ack_timeout = ack_timeout
        self._lock = threading.Lock()  # commands are applied one at a time, in order
        self._applied = 0
        self._results: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Catch up on the log (a restarted process, before it serves: ``_replay``), then
        follow it in a thread."""
        if self.log is None:
            return
        self._replay()
        self._thread = threading.Thread(target=self._follow, name="repository-control",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following the log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def load(self, model: str, force: bool = False) -> list[str]:
        """Load what is new for ``model`` everywhere; returns the refused versions
        (``"model:version: reason"``) of this process. Raises ``ModelNotFoundError``
        when the model has no directory, ``RepositoryControlError`` when a sibling
        refused or did not apply it."""
        if self.log is None:
            return self.models.reload(model, force=force)[1]
        self.models.check_loadable(model)
        return self._everywhere(self.log.append("load", model, force))

    def unload(self, model: str) -> None:
        """Unload every version of ``model`` everywhere; ``ModelNotFoundError`` for a
        model this process does not know, ``RepositoryControlError`` as for ``load``."""
        if self.log is None:
            self.models.unload(model)
            return
        self.models.check_known(model)
        refused = self._everywhere(self.log.append("unload", model))
        if refused:  # the model went away here between the check and the command
            raise RepositoryControlError(f"model_name: unload {model}: {'; '.join(refused)}")

    def _everywhere(self, command: Command) -> list[str]:
        refused_here = self.catch_up(command.seq)
        refused, late = self.log.wait_for_siblings(command.seq, self.ack_timeout)
        if refused or late:
            problems = [f"process {i} refused it: {why}" for i, why in sorted(refused.items())]
            problems += [f"process {i} has not applied it after {self.ack_timeout:.0f} s (a "
                         "restarting process applies it when it starts)" for i in late]
            here = (f"this process refused it too: {refused_here}" if refused_here
                    else "this process applied it")
            raise RepositoryControlError(
                f"{command.describe()}: not applied by every serving process: "
                + "; ".join(problems) + f"; {here}")
        return [line for line in refused_here.split("\n") if line]

    def catch_up(self, upto: int | None = None) -> str:
        """Apply the commands not applied yet (up to ``upto``; None: all), in order, and
        acknowledge them; returns what command ``upto`` refused ("" when none)."""
        with self._lock:
            for command in self.log.after(self._applied):
                if upto is not None and command.seq > upto:
                    break
                self._results[command.seq] = self._apply(command)
                self._applied = command.seq
            self._acknowledge()
            return self._results.get(upto, "") if upto is not None else ""

    def _replay(self) -> None:
        """Catch up at start, short of reloading: a process that starts has loaded every
        model in the repository, which is what a load does, so only the models whose
        newest command is an unload are unloaded (not every load and unload since the
        node started)."""
        with self._lock:
            newest: dict[str, Command] = {}
            for command in self.log.after(0):
                newest[command.model] = command
                self._applied = command.seq
            for command in sorted(newest.values(), key=lambda c: c.seq):
                if command.op == "unload":
                    self._results[command.seq] = self._apply(command)
            self._acknowledge()

    def _acknowledge(self) -> None:
        """Keep the results of the newest ``KEPT_RESULTS`` commands, and write them with
        how far this process got (the caller holds the lock)."""
        for n in sorted(self._results)[:-KEPT_RESULTS]:
            del self._results[n]
        self.log.acknowledge(self._applied, self._results)

    def _apply(self, command: Command) -> str:
        try:
            if command.op == "load":
                return "\n".join(self.models.reload(command.model, force=command.force)[1])
            if command.op == "unload":
                self.models.unload(command.model)
                return ""
            return f"unknown command {command.op!r}"
        except EdgeNodeError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad command must not stop the log
            log.exception("repository control: %s failed", command.describe())
            return f"{type(exc).__name__}: {exc}"

    def _follow(self) -> None:
        while not self._stop.wait(FOLLOW_S):
            try:
                if self.log.newest() > self._applied:
                    self.catch_up()
            except Exception:  # noqa: BLE001 - the follower must survive anything
                log.exception("repository control: cannot follow %s", self.log.directory)

