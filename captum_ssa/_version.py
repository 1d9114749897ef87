"""The package version, read by ``pyproject.toml`` at build time: its one source."""

__version__ = "0.1.0"
