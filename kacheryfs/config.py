"""The one source of truth for configuration: a frozen dataclass built from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_STORAGE_DIR = "~/kachery-storage"
DEFAULT_CONFIG_DIR = "~/.kachery-p2p"
DEFAULT_API_PORT = 20431


@dataclass(frozen=True)
class Config:
    storage_dir: Path
    config_dir: Path
    api_port: int = DEFAULT_API_PORT
    channels: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(
        cls,
        storage_dir: str | os.PathLike | None = None,
        config_dir: str | os.PathLike | None = None,
        channels: tuple[str, ...] | list[str] = (),
        environ: dict[str, str] | None = None,
    ) -> "Config":
        """Flags win over environment variables, which win over defaults."""
        env = os.environ if environ is None else environ
        storage = storage_dir or env.get("KACHERY_STORAGE_DIR") or DEFAULT_STORAGE_DIR
        config = config_dir or env.get("KACHERY_P2P_CONFIG_DIR") or DEFAULT_CONFIG_DIR
        port_text = env.get("KACHERY_P2P_API_PORT") or str(DEFAULT_API_PORT)
        try:
            port = int(port_text)
        except ValueError:
            port = DEFAULT_API_PORT
        return cls(
            storage_dir=Path(storage).expanduser().absolute(),
            config_dir=Path(config).expanduser().absolute(),
            api_port=port,
            channels=tuple(channels),
        )

    @property
    def mounts_dir(self) -> Path:
        """Where running mounts register themselves (one JSON file per daemon pid)."""
        return self.config_dir / "mounts"
