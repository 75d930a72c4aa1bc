"""mica's configuration: one TOML file loaded into frozen dataclasses.

Every key has a default, so an empty file is a valid config. :func:`load_config` checks the
whole file before it gives up and raises one :class:`ConfigError` that lists every problem
with its key path (``mqtt.port: must be <= 65535, got 70000``): unknown keys, wrong types,
values out of range or not among the choices, files that do not exist, and cross-key
conflicts. Relative paths are taken relative to the config file's folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mica.array_dsp.errors import ConfigError


def _opt(default: Any, doc: str, **check: Any) -> Any:
    """A config field: its default, its one-line doc (with unit) and its checks.

    ``check`` may hold ``min``, ``max`` (inclusive), ``choices``, ``path`` (an existing file,
    when non-empty) and ``item_min`` / ``item_max`` for lists.
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"doc": doc, **check})
    return field(default=default, metadata={"doc": doc, **check})


BEAMFORMERS = ("das", "superdirective", "mvdr")
"""``mica.array_dsp.enhancer.BEAMFORMERS``, spelled out so loading a config needs no numba
(a test keeps the two equal)."""


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _opt("mica", "device id, the <device_id> in every MQTT topic")
    """Device id used in topics (``mica/<id>/...``)."""
    board: str = _opt("generic", "board name reported in info")
    """Board name reported in ``info``."""


@dataclass(frozen=True)
class CaptureConfig:
    source: str = _opt("alsa", "where audio comes from: alsa or wav", choices=("alsa", "wav"))
    """``alsa`` (a capture PCM) or ``wav`` (a multichannel file replayed as the array)."""
    alsa_device: str = _opt("default", "ALSA PCM name (see arecord -L)")
    """ALSA PCM name, e.g. ``hw:CARD=ArrayUAC10,DEV=0`` or ``plughw:1,0``."""
    channels: int = _opt(4, "channels the device captures", min=1, max=64)
    """Channels captured from the device (microphones plus any other channels)."""
    fs_hz: int = _opt(16000, "capture sample rate (Hz)", min=8000, max=192000)
    """Capture sample rate in Hz."""
    format: str = _opt("S16_LE", "ALSA sample format",
                       choices=("S16_LE", "S24_3LE", "S32_LE"))
    """ALSA sample format."""
    period_frames: int = _opt(160, "ALSA period (frames per read); 160 = 10 ms at 16 kHz",
                              min=16, max=16384)
    """Frames per ALSA period; align with the DSP hop (10 ms) to avoid double buffering."""
    periods: int = _opt(4, "ALSA periods per buffer (the buffer absorbs a late reader)",
                        min=2, max=64)
    """ALSA buffer length in periods: ``periods * period_frames`` frames (4 x 10 ms = 40 ms)
    may pass unread before the device overruns; more survives longer stalls, the latency
    stays one period."""
    wav_path: str = _opt("", "multichannel WAV replayed when source = wav", path=True)
    """File replayed as the array when ``source = "wav"``."""
    wav_realtime: bool = _opt(True, "pace the WAV in real time (false: as fast as possible)")
    """Pace the WAV at its sample rate (true) or read as fast as the DSP takes it."""
    wav_loop: bool = _opt(False, "restart the WAV at its end instead of stopping")
    """Loop the WAV forever (for demos and soak tests)."""
    muted: bool = _opt(False, "start with the privacy mute on (unmute by command or SIGUSR2)")
    """Start muted: audio zeroed at capture and nothing published until ``unmute``."""
    devices: list = _opt([], "several ALSA devices as one array: [[capture.devices]] tables "
                             "(empty: the one device above)", table="CaptureDeviceConfig")
    """Multi-device capture: one :class:`CaptureDeviceConfig` per device, each with its own
    clock; ``alsa_device``, ``channels``, ``format`` above are then unused."""


@dataclass(frozen=True)
class CaptureDeviceConfig:
    """One ``[[capture.devices]]`` table (rate and period come from ``[capture]``)."""

    alsa_device: str = _opt("default", "ALSA PCM name")
    """ALSA PCM name of this device."""
    channels: int = _opt(2, "channels the device captures", min=1, max=64)
    """Channels captured from this device."""
    format: str = _opt("S16_LE", "ALSA sample format", choices=("S16_LE", "S24_3LE", "S32_LE"))
    """ALSA sample format of this device."""
    mic_channels: list = _opt([], "capture channels that are microphones (empty: all)",
                              item_min=0, item_max=63)
    """This device's capture channels that are microphones, in the order of
    ``geometry_rows``."""
    geometry_rows: list = _opt([], "geometry row of each microphone channel", item_min=0,
                               item_max=63)
    """Row of the array geometry each microphone channel is."""
    reference: bool = _opt(False, "this device's clock is the reference (default: the first "
                                  "microphone device)")
    """The other devices are resampled onto this one's clock."""
    role: str = _opt("mics", "mics (microphones) or reference (the playback loopback of the "
                     "echo canceller, e.g. hw:Loopback,1,0)", choices=("mics", "reference"))
    """``reference``: every channel of this device is a playback reference for ``[echo]``
    (no ``geometry_rows`` or ``mic_channels``; at most one such device; never the clock
    reference; needs ``echo.enabled``). It is resampled onto the clock reference at the
    ALSA-timestamp rate ratio from the first blocks' capture times (no acoustic offset
    search), and its channels follow the microphones in each block."""


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = _opt(True, "resample the other devices onto the reference clock")
    """Compensate drift (false: estimate and report it only)."""
    update_s: float = _opt(1.0, "seconds of signal per drift measurement", min=0.25,
                           max=10.0)
    """Segment length of one offset/drift measurement (the estimate's update period)."""
    max_offset_ms: float = _opt(250.0, "offset search range at (re)acquisition (+- ms)",
                                min=1.0, max=2000.0)
    """How far from the timestamp guess the GCC-PHAT offset search looks."""
    alsa_prior: bool = _opt(True, "use the ALSA-timestamp frame rates as the drift prior")
    """Prior from each device's frame rate against CLOCK_MONOTONIC."""
    memory_s: float = _opt(60.0, "forgetting time constant of the drift fit (s)", min=5.0,
                           max=3600.0)
    """Longer: steadier estimate; shorter: follows temperature changes faster."""
    event_jump_ppm: float = _opt(5.0, "a locked estimate moving by more raises event/drift",
                                 min=0.01, max=10000.0)
    """Threshold of the ``event/drift`` jump event (ppm)."""
    wait_ms: float = _opt(1000.0, "how long to wait for a late device before reopening",
                          min=10.0, max=60000.0)
    """A non-reference device silent for this long counts as failed."""



@dataclass(frozen=True)
class UsbConfig:
    poll_onboard: bool = _opt(False, "poll the XMOS USB array's own DOA and voice activity "
                              "into telemetry (onboard)")
    """Read ``DOAANGLE``, ``VOICEACTIVITY``, ``SPEECHDETECTED`` in a side thread and publish
    them as the ``onboard`` telemetry object (docs/mqtt.md)."""
    poll_interval_s: float = _opt(0.5, "seconds between two polls of the on-board detectors",
                                  min=0.05, max=60.0)
    """Each poll is three USB control transfers."""
    raw_channels: bool = _opt(False, "switch the array's own AGC, noise and echo suppression "
                              "off at start (mica processes the raw channels)")
    """Written again after every reconnection (a re-plugged array comes back with its
    defaults); see ``mica usb raw``."""
    device: str = _opt("", "bus:address of the array when several are plugged in (empty: the "
                       "only one)")
    """As ``mica usb list`` shows it."""
    timeout_ms: int = _opt(200, "USB control transfer timeout (ms)", min=10, max=10000)
    """A healthy array answers in well under 10 ms."""
    reconnect_s: float = _opt(2.0, "seconds between attempts to find the array again after an "
                              "unplug or repeated failures", min=0.1, max=600.0)
    """Also the wait after a failed first connection."""


@dataclass(frozen=True)
class EchoConfig:
    enabled: bool = _opt(False, "cancel the loudspeaker's echo (needs array.reference_channels "
                         "or a [[capture.devices]] table with role = \"reference\")")
    """Acoustic echo cancellation per microphone before the beamformer, fed by the playback
    loopback channels (``array.reference_channels`` of the one capture device, or every
    channel of the ``role = "reference"`` device of a multi-device array)."""
    tail_ms: float = _opt(128.0, "echo path length the filter models (ms)", min=10.0,
                          max=1000.0)
    """Filter tail; cost grows with it (partitions of one hop each)."""
    fast_start_s: float = _opt(1.0, "seconds of playback fitted by least squares after a "
                               "start, echo-path change or new delay; 0: off", min=0.0,
                               max=30.0)
    """Least-squares bootstrap of the Kalman canceller (``AecParams.bootstrap_s``): the
    first second of playback is cancelled about 16 dB better on speech; it costs about 0.1
    real-time factor per microphone while it runs (0 on a board that cannot spare it)."""
    max_delay_ms: float = _opt(200.0, "largest reference-to-mic bulk delay tracked (ms); "
                               "0: no tracking", min=0.0, max=1000.0)
    """Playback buffering between the reference tap and the loudspeaker, found by
    deconvolving the playback path (``array_dsp/echo_delay.py``) and taken off the
    reference so the tail covers the room, not the buffers."""
    res: bool = _opt(True, "residual-echo suppression after the beamformer")
    """Per-bin gains against what the linear canceller leaves; multiplied with the
    denoiser's gains."""
    res_floor_db: float = _opt(-20.0, "lowest residual-echo gain (dB)", min=-60.0, max=0.0)
    """Floor of the residual-echo gains (the denoiser keeps its own floor)."""


@dataclass(frozen=True)
class ArrayConfig:
    geometry_file: str = _opt("", "JSON sidecar with geometry_m (n_ch x 3, metres)", path=True)
    """Geometry sidecar (``geometry_m``: ``(n_ch, 3)`` metres), as in ``corpus/multichannel``."""
    geometry_m: list = _opt([], "inline geometry: list of [x, y, z] in metres")
    """Inline geometry, one ``[x, y, z]`` per microphone in metres (instead of a file)."""
    mic_channels: list = _opt([], "capture channels that are microphones, in geometry order "
                                  "(empty: all, in order)", item_min=0, item_max=63)
    """Capture channel index of each geometry row; empty means channel k is mic k."""
    reference_channels: list = _opt([], "capture channels carrying the playback loopback "
                                        "(echo reference)", item_min=0, item_max=63)
    """Loopback channels of the loudspeaker signal, e.g. ``[6, 7]`` on a ReSpeaker 6-mic HAT
    (the board profile fills them); used by ``[echo]``."""
    calibration_file: str = _opt("", "calibration JSON written by mica calibrate, applied at "
                                 "start (empty: none)", path=True)
    """Per-mic gain/delay corrections, position offsets, excluded mics and channel order
    measured on this board (format: docs/calibration.md)."""


@dataclass(frozen=True)
class DspConfig:
    fs_hz: int = _opt(16000, "processing and output rate (Hz)", choices=(16000,))
    """Rate of the enhanced output; capture at another rate is resampled to it."""
    hop_samples: int = _opt(160, "STFT hop = output block (samples)", min=32, max=1024)
    """STFT hop in samples at ``dsp.fs_hz`` (160 = 10 ms)."""
    steer_azimuth_deg: float = _opt(0.0, "beam look direction, azimuth (deg, CCW from +x)",
                                    min=-360.0, max=360.0)
    """Look direction azimuth in degrees, counter-clockwise from the geometry's +x axis."""
    steer_elevation_deg: float = _opt(0.0, "beam look direction, elevation (deg)",
                                      min=-90.0, max=90.0)
    """Look direction elevation in degrees above the geometry's x-y plane."""
    sound_speed_m_s: float = _opt(343.0, "speed of sound (m/s)", min=300.0, max=370.0)
    """Speed of sound in m/s."""
    denoiser: str = _opt("off", "post-filter on the beam output: off, mmse or model",
                         choices=("off", "mmse", "model"))
    """Denoiser after the beamformer: ``mmse`` (statistical MMSE-LSA, cheap), ``model`` (the
    learned GRU denoiser) or ``off``."""
    denoiser_bundle: str = _opt("", "weights bundle (.npz + .json card) for denoiser = model "
                                "(empty: the one shipped with mica)", path=True)
    """Weights bundle of the learned denoiser; empty means ``mica.models``' own."""

    beamformer: str = _opt("das", "beamformer: das, superdirective or mvdr",
                           choices=BEAMFORMERS)
    """``das`` (delay-and-sum), ``superdirective`` (MVDR against diffuse noise, fixed) or
    ``mvdr`` (online, SPP-driven covariances, RTF steering)."""
    steer: str = _opt("fixed", "look direction: fixed (steer_*_deg), auto (track the talker) "
                      "or zone:NAME")
    """``fixed`` uses ``steer_azimuth_deg``/``steer_elevation_deg``; ``auto`` follows the
    tracked DOA of the talker; ``zone:NAME`` looks at a direction from ``dsp.zones``."""
    doa_enabled: bool = _opt(True, "estimate the talker's direction (telemetry, event/doa)")
    """Run SRP-PHAT DOA and the tracker (always on with ``steer = "auto"``)."""
    exclude_dead_channels: bool = _opt(True, "leave dead/stuck microphones out of the beam")
    """Detect dead, stuck or far-too-quiet microphones and leave them out, without restart."""
    zones: dict = _opt({}, "named look directions: NAME = [azimuth_deg, elevation_deg]")
    """Named look directions, e.g. ``driver = [35.0, 0.0]``; picked by ``steer = "zone:NAME"``."""

@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = _opt(True, "connect to a broker at all")
    """Publish over MQTT (false: run the DSP only, e.g. for benchmarks)."""
    host: str = _opt("127.0.0.1", "broker host")
    """Broker host name or address."""
    port: int = _opt(1883, "broker TCP port", min=1, max=65535)
    """Broker TCP port."""
    prefix: str = _opt("mica", "topic prefix")
    """First topic level (``<prefix>/<device_id>/...``)."""
    client_id: str = _opt("", "MQTT client id (empty: mica-<device id>)")
    """MQTT client id; empty means ``mica-<device.id>``."""
    username: str = _opt("", "broker user name (empty: anonymous)")
    """User name for the broker; empty for anonymous."""
    password: str = _opt("", "broker password")
    """Password for the broker."""
    keepalive_s: int = _opt(30, "MQTT keepalive (s)", min=5, max=3600)
    """Keepalive interval in seconds; the broker publishes the last will after 1.5x."""
    audio_enabled: bool = _opt(False, "publish enhanced audio (off by default: privacy)")
    """Publish the enhanced audio stream (off until enabled: privacy)."""
    audio_stream: str = _opt("beam", "stream name, the last level of the audio topic")
    """Stream name in ``<prefix>/<id>/audio/<stream>``."""
    audio_chunk_ms: int = _opt(20, "audio chunk per message (ms), a multiple of the hop",
                               min=10, max=1000)
    """Milliseconds of audio per MQTT message (10, 20, 80 ... ; multiple of the DSP hop)."""
    telemetry_interval_s: float = _opt(5.0, "telemetry period (s)", min=0.1, max=3600.0)
    """Seconds between telemetry messages."""
    max_queued_messages: int = _opt(1000, "paho outgoing queue cap (messages)", min=10,
                                    max=1_000_000)
    """Messages paho may queue while the broker is away; beyond it audio is dropped, counted."""
    password_file: str = _opt("", "file holding the broker password (first line)", path=True)
    """File whose first line is the broker password (instead of ``password``, kept out of
    the config file)."""
    tls: bool = _opt(False, "connect with TLS")
    """Connect over TLS (port 8883 by convention); the server is checked against
    ``tls_ca_file`` or the system's CAs."""
    tls_ca_file: str = _opt("", "CA certificate(s) to check the broker (empty: system CAs)",
                            path=True)
    """PEM file of the CA(s) that signed the broker's certificate."""
    tls_cert_file: str = _opt("", "client certificate (PEM) for TLS client auth", path=True)
    """Client certificate, for brokers that authenticate devices by certificate."""
    tls_key_file: str = _opt("", "private key (PEM) of tls_cert_file", path=True)
    """Private key of ``tls_cert_file``."""
    telemetry_qos: int = _opt(1, "telemetry QoS (1: spooled while offline)", choices=(0, 1))
    """QoS of telemetry; at 1 telemetry goes through the store-and-forward spool."""
    spool_dir: str = _opt("", "store-and-forward folder (empty: in memory, lost on restart)")
    """Folder of the on-disk store-and-forward spool (one sub-folder per device id);
    empty keeps the backlog in memory only."""
    spool_max_bytes: int = _opt(8 * 2 ** 20, "spool size cap (bytes); oldest dropped beyond",
                                min=0, max=2 ** 40)
    """Bytes of QoS 1 messages kept while the broker is away; beyond it the oldest are
    dropped (counted). 0 disables the spool (paho's in-memory queue only)."""
    commands_enabled: bool = _opt(True, "accept commands on <prefix>/<id>/cmd/<name>")
    """Subscribe to ``cmd/+`` and answer on ``cmd/result``."""
    commands_allowed: list = _opt(["mute", "unmute", "steer", "zone", "quality", "audio",
                                   "reload"], "commands accepted (others get an error)")
    """Allow-list of command names; the others are answered with ``not_allowed``."""
    hermes_enabled: bool = _opt(False, "also publish audio as Rhasspy Hermes WAV frames")
    """Publish each audio chunk as a WAV on ``hermes/audioServer/<site id>/audioFrame``
    (only while audio is on)."""
    hermes_site_id: str = _opt("", "Hermes siteId (empty: device.id)")
    """Hermes site id; empty means ``device.id``."""
    ha_discovery: bool = _opt(True, "publish Home Assistant MQTT discovery")
    """Publish retained Home Assistant discovery configs for the telemetry sensors."""
    ha_discovery_prefix: str = _opt("homeassistant", "Home Assistant discovery prefix")
    """Discovery prefix configured in Home Assistant's MQTT integration."""
    wyoming_uri: str = _opt("", "Wyoming mic server, tcp://HOST:PORT (empty: off)")
    """Serve the enhanced stream as a Wyoming ``mic`` service (not MQTT: Home Assistant's
    wyoming-satellite connects with ``--mic-uri tcp://<board>:PORT``); needs the
    ``wyoming`` extra. Stopped by ``mute`` like the MQTT audio."""


@dataclass(frozen=True)
class ServiceConfig:
    ring_blocks: int = _opt(64, "capture -> DSP queue length (blocks); oldest dropped when full",
                            min=2, max=100_000)
    """Blocks the capture thread may queue for the DSP thread before the oldest is dropped."""
    out_queue_blocks: int = _opt(256, "DSP -> publisher queue length (blocks)", min=2,
                                 max=100_000)
    """Enhanced blocks queued for the publisher before the oldest is dropped."""
    log_level: str = _opt("INFO", "logging level",
                          choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    """Python logging level (logs go to stderr / journald)."""


@dataclass(frozen=True)
class GovernorConfig:
    enabled: bool = _opt(True, "adapt the quality level to temperature, throttling and DSP load")
    """Let the governor lower (and raise again) the quality level; false: the best level."""
    levels: list = _opt([], "chain names, best first (empty: every beamformer, best first)")
    """Quality levels, best first, each a chain name (``"mvdr"``, ``"superdirective"``,
    ``"das"``); empty means every beamformer the enhancer offers."""
    interval_s: float = _opt(1.0, "seconds between governor readings", min=0.05, max=60.0)
    """How often the sensors are read and the level reconsidered."""
    root: str = _opt("/", "root holding sys/ for thermal zones and Pi throttling")
    """Root of the tree the sensors are read from (``/`` on the board)."""
    vcgencmd: str = _opt("vcgencmd", "command asked for Pi throttling when sysfs lacks it "
                         "(empty: never)")
    """Binary run as ``<vcgencmd> get_throttled`` when the firmware's sysfs attribute is
    missing."""
    temp_high_c: float = _opt(75.0, "temperature that lowers the level (deg C)",
                              min=20.0, max=150.0)
    """Hottest thermal zone at or above this lowers the quality level, one step at a time."""
    temp_hysteresis_c: float = _opt(5.0, "cooling below temp_high_c needed to go back up "
                                    "(deg C)", min=0.0, max=50.0)
    """The level goes back up only below ``temp_high_c - temp_hysteresis_c``."""
    dsp_budget: float = _opt(0.5, "share of one core the DSP may use (0.5 = 50 %)",
                             min=0.01, max=4.0)
    """DSP time per block over the block's audio time above this lowers the level."""
    dsp_recover: float = _opt(0.35, "DSP share below which the level may go back up",
                              min=0.0, max=4.0)
    """The level goes back up only while the DSP uses less than this share of one core."""
    min_dwell_s: float = _opt(30.0, "least time at a level before going back up (s)",
                              min=0.0, max=86400.0)
    """Seconds a level is held before the governor raises it again."""
    down_dwell_s: float = _opt(3.0, "least time between two steps down (s)",
                               min=0.0, max=3600.0)
    """Seconds between two steps down, so each level is measured before the next."""


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    array: ArrayConfig = field(default_factory=ArrayConfig)
    dsp: DspConfig = field(default_factory=DspConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    governor: GovernorConfig = field(default_factory=GovernorConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    echo: EchoConfig = field(default_factory=EchoConfig)
    usb: UsbConfig = field(default_factory=UsbConfig)

    @property
    def topic_base(self) -> str:
        """``<prefix>/<device id>``, the start of every topic."""
        return f"{self.mqtt.prefix}/{self.device.id}"

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"mica-{self.device.id}"

    @property
    def config_hash(self) -> str:
        """First 12 hex digits of the SHA-256 of the canonical JSON of this config."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------- checking


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list"}.get(tp, str(tp))


def _check_scalar(path: str, value: Any, tp: Any, meta: dict, base_dir: Path,
                  problems: list[str]) -> Any:
    """Check one value against its declared type and metadata; return the value to store."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if not ok:
        problems.append(f"{path}: must be {_type_name(tp)}, got {type(value).__name__} "
                        f"{value!r}")
        return None
    if "choices" in meta and value not in meta["choices"]:
        problems.append(f"{path}: must be one of {list(meta['choices'])}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        problems.append(f"{path}: must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        problems.append(f"{path}: must be <= {meta['max']}, got {value!r}")
    if tp is list:
        for i, item in enumerate(value):
            if "item_min" in meta and (not isinstance(item, int) or isinstance(item, bool)):
                problems.append(f"{path}[{i}]: must be an integer, got {item!r}")
            elif "item_min" in meta and not meta["item_min"] <= item <= meta["item_max"]:
                problems.append(f"{path}[{i}]: must be in [{meta['item_min']}, "
                                f"{meta['item_max']}], got {item!r}")
    if meta.get("path") and value:
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = base_dir / p
        if not p.is_file():
            problems.append(f"{path}: file not found: {p}")
        value = str(p)
    return value


def _build(cls: type, table: Any, path: str, base_dir: Path, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from a TOML table, appending every problem found."""
    if not isinstance(table, dict):
        problems.append(f"{path}: must be a table, got {type(table).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{sub}: unknown key (known here: {known})")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, sub, base_dir, problems)
            continue
        if isinstance(tp, types.GenericAlias):
            tp = typing.get_origin(tp)
        table_cls = fields[key].metadata.get("table")
        if table_cls is not None:  # a list of tables ([[section.key]])
            if not isinstance(value, list):
                problems.append(f"{sub}: must be a list of tables ([[{sub}]]), got "
                                f"{type(value).__name__}")
                continue
            item_cls = globals()[table_cls]
            kwargs[key] = [_build(item_cls, item, f"{sub}[{i}]", base_dir, problems)
                           for i, item in enumerate(value)]
            continue
        checked = _check_scalar(sub, value, tp, dict(fields[key].metadata), base_dir, problems)
        if checked is not None:
            kwargs[key] = checked
    return cls(**kwargs)


def _dsp_checks(dsp: DspConfig, problems: list[str]) -> None:
    """``dsp.zones`` entries and ``dsp.steer`` naming a zone."""
    for name, value in dsp.zones.items():
        row = value if isinstance(value, list) else None
        if (row is None or len(row) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
                or not -90.0 <= row[1] <= 90.0):
            problems.append(f"dsp.zones.{name}: must be [azimuth_deg, elevation_deg] with "
                            f"elevation in [-90, 90], got {value!r}")
    if dsp.steer.startswith("zone:"):
        if dsp.steer[5:] not in dsp.zones:
            known = ", ".join(sorted(dsp.zones)) or "none"
            problems.append(f"dsp.steer: zone {dsp.steer[5:]!r} is not in dsp.zones "
                            f"(zones: {known})")
    elif dsp.steer not in ("fixed", "auto"):
        problems.append(f"dsp.steer: must be fixed, auto or zone:NAME, got {dsp.steer!r}")


def _cross_checks(cfg: Config, problems: list[str]) -> None:
    """Conflicts between keys that no single key shows."""
    _dsp_checks(cfg.dsp, problems)
    if cfg.capture.source == "wav" and not cfg.capture.wav_path:
        problems.append("capture.wav_path: required when capture.source = \"wav\"")
    if cfg.array.geometry_file and cfg.array.geometry_m:
        problems.append("array.geometry_m: give either array.geometry_file or "
                        "array.geometry_m, not both")
    for i, row in enumerate(cfg.array.geometry_m):
        if (not isinstance(row, list) or len(row) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)):
            problems.append(f"array.geometry_m[{i}]: must be [x, y, z] in metres, got {row!r}")
    for i, ch in enumerate(cfg.array.mic_channels):
        if isinstance(ch, int) and not isinstance(ch, bool) and ch >= cfg.capture.channels:
            problems.append(f"array.mic_channels[{i}]: channel {ch} does not exist "
                            f"(capture.channels = {cfg.capture.channels})")
    if len(set(cfg.array.mic_channels)) != len(cfg.array.mic_channels):
        problems.append("array.mic_channels: lists a channel twice")
    if cfg.mqtt.password and cfg.mqtt.password_file:
        problems.append("mqtt.password_file: give either mqtt.password or "
                        "mqtt.password_file, not both")
    if bool(cfg.mqtt.tls_cert_file) != bool(cfg.mqtt.tls_key_file):
        problems.append("mqtt.tls_key_file: mqtt.tls_cert_file and mqtt.tls_key_file go "
                        "together")
    for i, name in enumerate(cfg.mqtt.commands_allowed):
        if not isinstance(name, str):
            problems.append(f"mqtt.commands_allowed[{i}]: must be a string, got {name!r}")
    for key in ("prefix", "audio_stream", "hermes_site_id", "ha_discovery_prefix"):
        value = getattr(cfg.mqtt, key)
        if any(c in value for c in "+#\0") or (key != "prefix" and "/" in value):
            problems.append(f"mqtt.{key}: no MQTT wildcard{'' if key == 'prefix' else ' or /'} "
                            f"allowed, got {value!r}")
    if any(c in cfg.device.id for c in "/+#\0") or not cfg.device.id:
        problems.append(f"device.id: must be one non-empty topic level, got {cfg.device.id!r}")
    for i, name in enumerate(cfg.governor.levels):
        if not isinstance(name, str):
            problems.append(f"governor.levels[{i}]: must be a chain name, got {name!r}")
    if cfg.governor.dsp_recover > cfg.governor.dsp_budget:
        problems.append(f"governor.dsp_recover: {cfg.governor.dsp_recover} is above "
                        f"governor.dsp_budget = {cfg.governor.dsp_budget}")
    _check_capture_devices(cfg, problems)
    _check_echo(cfg, problems)
    chunk = cfg.mqtt.audio_chunk_ms * cfg.dsp.fs_hz // 1000
    if chunk % cfg.dsp.hop_samples:
        problems.append(f"mqtt.audio_chunk_ms: {cfg.mqtt.audio_chunk_ms} ms = {chunk} samples "
                        f"is not a multiple of dsp.hop_samples = {cfg.dsp.hop_samples}")


def _check_capture_devices(cfg: Config, problems: list[str]) -> None:
    """``[[capture.devices]]``: channels exist, geometry rows 0..N-1 once, one reference."""
    devices = cfg.capture.devices
    if not devices:
        return
    if cfg.capture.source != "alsa":
        problems.append("capture.devices: multi-device capture needs capture.source = "
                        "\"alsa\"")
    if cfg.array.mic_channels:
        problems.append("array.mic_channels: with capture.devices, list each device's "
                        "mic_channels instead")
    rows: list[int] = []
    n_refs = 0
    for i, dev in enumerate(devices):
        path = f"capture.devices[{i}]"
        if dev.role == "reference":
            n_refs += 1
            if n_refs > 1:
                problems.append(f"{path}.role: more than one device has role = \"reference\" "
                                "(give one playback loopback device)")
            if dev.reference:
                problems.append(f"{path}.reference: a role = \"reference\" (playback "
                                "loopback) device cannot be the clock reference")
            if dev.geometry_rows:
                problems.append(f"{path}.geometry_rows: a role = \"reference\" device has no "
                                "microphones (every channel is playback)")
            if dev.mic_channels:
                problems.append(f"{path}.mic_channels: a role = \"reference\" device has no "
                                "microphones (every channel is playback)")
            if not cfg.echo.enabled:
                problems.append(f"{path}.role: a role = \"reference\" device feeds the echo "
                                "canceller: set echo.enabled = true (or remove this device)")
            continue
        mics = dev.mic_channels or list(range(dev.channels))
        for ch in mics:
            if isinstance(ch, int) and ch >= dev.channels:
                problems.append(f"{path}.mic_channels: channel {ch} does not exist "
                                f"(channels = {dev.channels})")
        if len(dev.geometry_rows) != len(mics):
            problems.append(f"{path}.geometry_rows: {len(dev.geometry_rows)} row(s) for "
                            f"{len(mics)} microphone channel(s)")
        rows += [r for r in dev.geometry_rows if isinstance(r, int)]
    if sorted(rows) != list(range(len(rows))):
        problems.append(f"capture.devices: geometry_rows together must be 0..{len(rows) - 1}, "
                        f"each once, got {sorted(rows)}")
    if sum(dev.reference for dev in devices) > 1:
        problems.append("capture.devices: more than one device has reference = true")
    if n_refs == len(devices):
        problems.append("capture.devices: no microphone device (every device has role = "
                        "\"reference\")")


def _check_echo(cfg: Config, problems: list[str]) -> None:
    """``array.reference_channels`` exist, are not microphones; ``[echo]`` has them."""
    refs = cfg.array.reference_channels
    for i, ch in enumerate(refs):
        if isinstance(ch, int) and not isinstance(ch, bool) and ch >= cfg.capture.channels:
            problems.append(f"array.reference_channels[{i}]: channel {ch} does not exist "
                            f"(capture.channels = {cfg.capture.channels})")
    both = sorted(set(refs) & set(cfg.array.mic_channels))
    if both:
        problems.append(f"array.reference_channels: channel(s) {both} are also in "
                        "array.mic_channels")
    if len(set(refs)) != len(refs):
        problems.append("array.reference_channels: lists a channel twice")
    devices = cfg.capture.devices
    if devices and refs:
        problems.append("array.reference_channels: with capture.devices, give the playback "
                        "loopback as a [[capture.devices]] table with role = \"reference\"")
    if cfg.echo.enabled and devices:
        if not refs and not any(dev.role == "reference" for dev in devices):
            problems.append("echo.enabled: with capture.devices, needs a [[capture.devices]] "
                            "table with role = \"reference\" (the playback loopback device, "
                            "e.g. hw:Loopback,1,0)")
    elif cfg.echo.enabled:
        if not refs:
            problems.append("echo.enabled: needs array.reference_channels (the playback "
                            "loopback channels)")
        elif not cfg.array.mic_channels:
            problems.append("array.mic_channels: needed with array.reference_channels, so "
                            "microphones and references are told apart")


def _with_board_profile(data: dict, board: str | None) -> dict:
    """``data`` over the defaults of board profile ``board`` (or of ``device.board`` when it
    names a built-in profile): the profile fills ``[capture]`` and ``[array]``, every key the
    file sets wins. An unknown ``device.board`` stays a plain label; an unknown ``board``
    argument (``mica run --board``) is an error."""
    from mica.calibration.profiles import ProfileError, list_profiles, load_profile

    device = data.get("device") if isinstance(data.get("device"), dict) else {}
    name = board or device.get("board")
    if not isinstance(name, str) or (board is None and name not in list_profiles()):
        return data
    try:
        defaults = load_profile(name).config_defaults()
    except ProfileError as err:
        raise ConfigError([f"device.board: {err}"]) from err
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    user_array = merged.get("array", {}) if isinstance(merged.get("array"), dict) else {}
    if user_array.get("geometry_file") or user_array.get("geometry_m"):
        defaults["array"].pop("geometry_m")  # the file's own geometry replaces the profile's
        if "mic_channels" not in user_array:
            defaults["array"].pop("mic_channels")
    for section, keys in defaults.items():
        table = merged.get(section, {})
        if isinstance(table, dict):
            merged[section] = {**keys, **table}
    merged["device"] = {**device, "board": name}
    return merged


def parse_config(data: dict, base_dir: Path, source: str = "config",
                 board: str | None = None) -> Config:
    """Build a :class:`Config` from an already parsed TOML mapping; raise on any problem.

    ``board`` (or a ``device.board`` naming a built-in profile) fills ``[capture]`` and
    ``[array]`` from that board profile; keys set in ``data`` override it.
    """
    problems: list[str] = []
    data = _with_board_profile(data, board)
    cfg = _build(Config, data, "", base_dir, problems)
    if not problems:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | Path | None, board: str | None = None) -> Config:
    """Load and check a TOML config file (``None``: all defaults).

    ``board``: a board profile name (``mica run --board``) whose capture and array settings
    fill what the file leaves unset.

    Raises:
        ConfigError: listing every problem with its key path, or the TOML syntax error.
    """
    if path is None:
        return Config() if board is None else parse_config({}, Path.cwd(), f"board {board}",
                                                           board)
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError([f"file not found: {p}"], str(p)) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"cannot read: {err}"], str(p)) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"not valid TOML: {err}"], str(p)) from err
    return parse_config(data, p.resolve().parent, str(p), board)


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys of some sections changed (CLI overrides)."""
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **kv)
                for name, kv in sections.items()})
