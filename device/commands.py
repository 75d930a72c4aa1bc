"""Commands on ``<base>/cmd/<name>``: parsing, validation and the result message.

:func:`parse_command` turns the topic's last level and the raw payload into a
:class:`Command`, or raises :class:`CommandError` with a machine-readable ``code`` and a
message for people. It never raises anything else, whatever the bytes (tested with 10^4
random payloads). Applying a command is the service's job (``device/service.py``);
:func:`result_payload` builds the JSON answered on ``<base>/cmd/result``.

Payloads are JSON objects (an empty payload counts as ``{}``). Every object may carry
``"id"`` (a string of at most 128 characters or an integer), echoed in the result for
clients without MQTT 5 correlation data. Unknown keys are errors, so a typo never passes
silently.

========== ======================================== =========================================
name       payload                                  effect
========== ======================================== =========================================
mute       ``{}``                                   privacy mute: audio zeroed at capture,
                                                    nothing processed or published; reported
                                                    in info/telemetry ``muted``
unmute     ``{}``                                   end the mute, publish audio again (if
                                                    enabled)
steer      ``{"azimuth_deg": a, "elevation_deg": e}`` point the beam (elevation optional, 0)
zone       ``{"zone": "driver"}``                   select a named listening zone
quality    ``{"level": "das"}`` or ``{"level": 1}``     force a quality level (name or index)
audio      ``{"enabled": true}``                    audio stream on/off
reload     ``{}``                                   re-read the config file, apply what can be
                                                    applied live
========== ======================================== =========================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

COMMANDS = ("mute", "unmute", "steer", "zone", "quality", "audio", "reload")
"""Every command name mica knows."""

MAX_PAYLOAD_BYTES = 4096
"""Longer payloads are refused before parsing."""

MAX_ID_CHARS = 128
MAX_NAME_CHARS = 64


ERROR_CODES = ("unknown_command", "not_allowed", "bad_json", "bad_payload", "too_large",
               "not_supported", "failed")
"""``error.code`` values of a failed result."""


class CommandError(Exception):
    """A command that cannot be accepted or applied; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    """Validated arguments, with defaults filled in."""
    request_id: str | int | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(args: dict, key: str, lo: float, hi: float, default: float | None = None) -> float:
    if key not in args:
        if default is None:
            raise CommandError("bad_payload", f"'{key}' is required")
        return default
    value = args[key]
    if not _is_number(value) or not math.isfinite(value):
        raise CommandError("bad_payload", f"'{key}' must be a finite number, got "
                           f"{_short(value)}")
    if not lo <= value <= hi:
        raise CommandError("bad_payload", f"'{key}' must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _string(args: dict, key: str, max_chars: int = MAX_NAME_CHARS) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise CommandError("bad_payload", f"'{key}' must be a non-empty string of at most "
                           f"{max_chars} characters, got {_short(value)}")
    return value


def _only(args: dict, allowed: tuple[str, ...]) -> None:
    extra = sorted(str(k) for k in args if k not in allowed)
    if extra:
        raise CommandError("bad_payload", f"unknown key(s) {_short(extra)}; allowed: "
                           f"{list(allowed) or 'none'}")


def _validate(name: str, args: dict) -> dict[str, Any]:
    if name in ("mute", "unmute", "reload"):
        _only(args, ())
        return {}
    if name == "steer":
        _only(args, ("azimuth_deg", "elevation_deg"))
        return {"azimuth_deg": _number(args, "azimuth_deg", -360.0, 360.0),
                "elevation_deg": _number(args, "elevation_deg", -90.0, 90.0, 0.0)}
    if name == "zone":
        _only(args, ("zone",))
        return {"zone": _string(args, "zone")}
    if name == "quality":
        _only(args, ("level",))
        level = args.get("level")
        if isinstance(level, float) and level.is_integer():
            level = int(level)  # JSON has one number type: 1.0 is the integer 1
        if isinstance(level, int) and not isinstance(level, bool) and 0 <= level < 64:
            return {"level": level}
        return {"level": _string(args, "level")}
    if name == "audio":
        _only(args, ("enabled",))
        if not isinstance(args.get("enabled"), bool):
            raise CommandError("bad_payload", f"'enabled' must be true or false, got "
                               f"{_short(args.get('enabled'))}")
        return {"enabled": args["enabled"]}
    raise CommandError("unknown_command", f"unknown command {_short(name)}")  # pragma: no cover


def parse_command(name: str, payload: bytes | bytearray | str,
                  allowed: tuple[str, ...] | list[str] | frozenset[str] = COMMANDS) -> Command:
    """Validate one command.

    Args:
        name: the topic's last level (``<base>/cmd/<name>``).
        payload: the raw MQTT payload (UTF-8 JSON object; empty means ``{}``).
        allowed: the names accepted (``mqtt.commands_allowed``).

    Raises:
        CommandError: with ``code`` ``unknown_command``, ``not_allowed``, ``too_large``,
            ``bad_json`` or ``bad_payload``; ``request_id`` set when the payload had one.
    """
    if not isinstance(name, str) or name not in COMMANDS:
        raise CommandError("unknown_command", f"unknown command {_short(name)}; known: "
                           f"{list(COMMANDS)}")
    raw = payload.encode("utf-8", "replace") if isinstance(payload, str) else bytes(payload)
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise CommandError("too_large", f"payload of {len(raw)} bytes; at most "
                           f"{MAX_PAYLOAD_BYTES}")
    if raw.strip() == b"":
        data: Any = {}
    else:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise CommandError("bad_json", f"payload is not UTF-8 JSON: {err}") from None
    if not isinstance(data, dict):
        raise CommandError("bad_payload", f"payload must be a JSON object, got "
                           f"{type(data).__name__}")
    request_id = data.pop("id", None)
    if isinstance(request_id, float) and request_id.is_integer() and abs(request_id) < 2 ** 63:
        request_id = int(request_id)  # JSON has one number type: 7.0 is the integer 7
    if request_id is not None and not (
            (isinstance(request_id, str) and len(request_id) <= MAX_ID_CHARS)
            or (isinstance(request_id, int) and not isinstance(request_id, bool)
                and abs(request_id) < 2 ** 63)):
        raise CommandError("bad_payload", f"'id' must be a string of at most {MAX_ID_CHARS} "
                           f"characters or an integer, got {_short(request_id)}")
    if name not in allowed:
        raise CommandError("not_allowed", f"command {name!r} is not in mqtt.commands_allowed",
                           request_id)
    try:
        args = _validate(name, data)
    except CommandError as err:
        err.request_id = request_id
        raise
    return Command(name, args, request_id)


def result_payload(name: str, *, ok: bool, result: dict[str, Any] | None = None,
                   error: CommandError | None = None,
                   request_id: str | int | None = None) -> dict[str, Any]:
    """The JSON object published on ``<base>/cmd/result`` (schema: docs/schemas/cmd_result)."""
    out: dict[str, Any] = {"command": name if isinstance(name, str) else str(name), "ok": ok}
    if len(out["command"]) > MAX_NAME_CHARS:
        out["command"] = out["command"][:MAX_NAME_CHARS]
    if request_id is not None:
        out["id"] = request_id
    if ok:
        out["result"] = result or {}
    else:
        assert error is not None
        out["error"] = {"code": error.code, "message": error.message[:500]}
    return out
