"""The root of mica's exceptions (lives in the bottom layer so every layer can use it)."""


class MicaError(Exception):
    """Base class of every error mica raises on purpose."""


class GeometryError(MicaError):
    """An array geometry (or its sidecar file) is malformed."""


class ConfigError(MicaError):
    """A configuration is invalid; ``problems`` lists every ``key.path: message``."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class AudioFileError(MicaError):
    """An audio file cannot be read or does not fit what was asked of it."""


class DeviceError(MicaError):
    """A capture device cannot be opened or read."""
