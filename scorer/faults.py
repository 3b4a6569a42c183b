"""Fault injection for tests: make a worker die at an exact point, not after a random sleep.

`FRAUDSTREAM_SCORER_FAULT=exit-after-store:N` makes the worker end its process
(`os._exit`, as abruptly as a SIGKILL: no cleanup, nothing flushed, nothing acknowledged)
right after its Nth committed write to PostgreSQL, before it publishes that batch's
alerts or acknowledges its offsets: the one moment at-least-once delivery has to get
right. `exit-after-label-store:N` does the same after the labels agent's Nth write. For
tests only; unset (the default) it does nothing.

    >>> Fault.parse("exit-after-store:3")
    Fault(exit_after_store=3, exit_after_label_store=None)
    >>> Fault.parse("exit-after-label-store:1")
    Fault(exit_after_store=None, exit_after_label_store=1)
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: The exit status of a worker ended by an injected fault (tests tell it from a crash).
FAULT_EXIT_CODE = 86

_EXIT_AFTER_STORE = re.compile(r"exit-after-(label-)?store:([1-9][0-9]*)")


@dataclass(frozen=True)
class Fault:
    exit_after_store: int | None = None
    exit_after_label_store: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Fault:
        if not text:
            return cls()
        match = _EXIT_AFTER_STORE.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"unknown scorer fault {text!r} (supported: exit-after-store:N, exit-after-label-store:N)"
            )
        if match.group(1):
            return cls(exit_after_label_store=int(match.group(2)))
        return cls(exit_after_store=int(match.group(2)))

    def for_labels(self) -> Fault:
        """The same fault as the labels agent's writer counts it (its own writes, not the scores')."""
        return Fault(exit_after_store=self.exit_after_label_store)


@dataclass
class FaultInjector:
    fault: Fault
    stores: int = field(default=0, init=False)

    def after_store(self) -> None:
        """Called after each committed write; ends the process at the chosen one."""
        self.stores += 1
        if self.fault.exit_after_store == self.stores:
            log.critical(
                "injected fault: exiting after committed store %d, before publishing or acking", self.stores
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(FAULT_EXIT_CODE)
