"""``mica devices``: the capture PCMs ALSA offers and the USB arrays plugged in.

ALSA: the names come from ALSA's device hints (``alsaaudio.pcms(PCM_CAPTURE)``, what
``arecord -L`` lists). Each PCM is opened once, non-blocking, in a forked child process
that reports the channel counts, sample formats and rates its hardware parameters allow
(``snd_pcm_hw_params`` ranges via pyalsaaudio's ``getchannels``/``getformats``/``getrates``)
and closes it again. A PCM whose open blocks (a FIFO nobody writes, a hung driver) is
killed after ``timeout_s``; a busy or broken one shows its error in its row. Probing in a
child keeps a plugin that hangs or crashes from taking ``mica devices`` with it.

USB: arrays known by vendor/product id (:data:`KNOWN_USB_ARRAYS`), found with pyusb; with
no USB bus or no libusb the list is empty and ``usb_error`` says why.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from mica.device.usb_xmos import XMOS_VENDOR_ID, XVF3000_PRODUCT_ID

PROBE_TIMEOUT_S = 2.0
"""How long one PCM may take to open and answer before its probe is abandoned."""

KNOWN_USB_ARRAYS: dict[tuple[int, int], str] = {
    (XMOS_VENDOR_ID, XVF3000_PRODUCT_ID): "ReSpeaker USB Mic Array v2.0 (XMOS XVF-3000)",
}
"""(vendor id, product id) -> name of the microphone arrays ``mica devices`` recognises."""


@dataclass
class PcmInfo:
    """What one capture PCM accepts (empty lists and ``error`` set when it could not be
    probed)."""

    name: str
    channels: list[int] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    rates_hz: list[int] = field(default_factory=list)
    """Discrete rates, or ``[min, max]`` of a continuous range (see :attr:`rate_range`)."""
    rate_range: bool = False
    error: str | None = None


@dataclass
class UsbArrayInfo:
    """One USB array with a known vendor/product id."""

    name: str
    vendor_id: str
    product_id: str
    location: str


def _probe_in_child(name: str, conn: Any) -> None:
    """Child process: open ``name`` non-blocking, send its parameter ranges, exit."""
    try:
        import alsaaudio

        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NONBLOCK, device=name)
        try:
            channels = [int(c) for c in pcm.getchannels()]
            formats = sorted(pcm.getformats())
            rates = pcm.getrates()
        finally:
            pcm.close()
        if isinstance(rates, tuple):  # a continuous range (min, max)
            result = {
                "channels": channels,
                "formats": formats,
                "rates_hz": [int(rates[0]), int(rates[1])],
                "rate_range": True,
            }
        else:
            rate_list = rates if isinstance(rates, list) else [rates]
            result = {
                "channels": channels,
                "formats": formats,
                "rates_hz": [int(r) for r in rate_list],
                "rate_range": False,
            }
        conn.send(result)
    except BaseException as err:  # everything goes back to the parent as the row's error
        conn.send({"error": str(err) or type(err).__name__})
    finally:
        conn.close()


def probe_pcms(names: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> list[PcmInfo]:
    """Open each capture PCM briefly (each in its own child process, all at once) and read
    what it accepts; a PCM that has not answered ``timeout_s`` after the start is killed."""
    ctx = multiprocessing.get_context("fork")
    started = []
    for name in names:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_probe_in_child, args=(name, child), daemon=True)
        proc.start()
        child.close()
        started.append((name, parent, proc))
    deadline = time.monotonic() + timeout_s
    infos = []
    for name, parent, proc in started:
        try:
            if not parent.poll(max(0.0, deadline - time.monotonic())):
                infos.append(
                    PcmInfo(name, error=f"no answer within {timeout_s:g} s (the open blocks)")
                )
                continue
            try:
                infos.append(PcmInfo(name, **parent.recv()))
            except EOFError:
                proc.join(1.0)
                infos.append(PcmInfo(name, error=f"probe died (exit code {proc.exitcode})"))
        finally:
            parent.close()
            if proc.is_alive():
                proc.kill()
            proc.join(1.0)
    return infos


def probe_pcm(name: str, timeout_s: float = PROBE_TIMEOUT_S) -> PcmInfo:
    """:func:`probe_pcms` for one PCM."""
    return probe_pcms([name], timeout_s)[0]


def list_pcms(timeout_s: float = PROBE_TIMEOUT_S) -> list[PcmInfo]:
    """Every capture PCM in ALSA's hints, probed (``null`` is left out).

    Raises:
        DeviceError: pyalsaaudio is missing or ALSA cannot enumerate its PCMs.
    """
    from mica.device.sources.alsa import list_capture_devices

    return probe_pcms([n for n in list_capture_devices() if n != "null"], timeout_s)


def list_usb_arrays(backend: Any = None) -> tuple[list[UsbArrayInfo], str | None]:
    """Plugged-in arrays of :data:`KNOWN_USB_ARRAYS` and an error (``None`` when the bus
    could be searched; no backend or no bus is an error, not an exception)."""
    from mica.device.usb_xmos import UsbError, find_arrays

    found: list[UsbArrayInfo] = []
    for (vid, pid), label in KNOWN_USB_ARRAYS.items():
        try:
            arrays = find_arrays(backend, vendor_id=vid, product_id=pid)
        except UsbError as err:
            return found, str(err)
        found += [UsbArrayInfo(label, f"{vid:04x}", f"{pid:04x}", a.location) for a in arrays]
    return found, None


def devices_report(timeout_s: float = PROBE_TIMEOUT_S, usb_backend: Any = None) -> dict[str, Any]:
    """``{"alsa": [...], "alsa_error", "usb": [...], "usb_error"}`` as ``--json`` prints it."""
    from mica.array_dsp.errors import DeviceError

    alsa_error = None
    try:
        pcms = list_pcms(timeout_s)
    except DeviceError as err:
        pcms, alsa_error = [], str(err)
    usb, usb_error = list_usb_arrays(usb_backend)
    return {
        "alsa": [asdict(p) for p in pcms],
        "alsa_error": alsa_error,
        "usb": [asdict(u) for u in usb],
        "usb_error": usb_error,
    }


def _rates_text(row: dict[str, Any]) -> str:
    rates = row["rates_hz"]
    if row["rate_range"]:
        return f"{rates[0]}-{rates[1]}"
    return ",".join(str(r) for r in rates)


def format_table(report: dict[str, Any]) -> str:
    """The report as aligned text: one row per PCM, then the USB arrays."""
    rows = [("PCM", "CHANNELS", "FORMATS", "RATES_HZ")]
    for p in report["alsa"]:
        if p["error"]:
            rows.append((p["name"], "-", "-", f"error: {p['error']}"))
        else:
            rows.append(
                (
                    p["name"],
                    ",".join(map(str, p["channels"])),
                    ",".join(p["formats"]),
                    _rates_text(p),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    ]
    if report["alsa_error"]:
        lines.append(f"ALSA: {report['alsa_error']}")
    elif not report["alsa"]:
        lines.append("(no ALSA capture PCMs)")
    lines.append("")
    if report["usb"]:
        lines.append("USB arrays:")
        lines += [
            f"  {u['vendor_id']}:{u['product_id']} at {u['location']}  {u['name']}"
            for u in report["usb"]
        ]
    else:
        why = f" ({report['usb_error']})" if report["usb_error"] else ""
        lines.append(f"USB arrays: none{why}")
    return "\n".join(lines)


def _cmd_devices(args: argparse.Namespace, out: TextIO | None = None) -> int:
    report = devices_report(args.timeout_s)
    out = out or sys.stdout
    if args.json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report) + "\n")
    return 0


def register(sub: Any) -> None:
    """Add ``mica devices`` to the CLI's sub-parsers."""
    dev = sub.add_parser(
        "devices", help="list ALSA capture PCMs (channels, formats, rates) and known USB arrays"
    )
    dev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dev.add_argument(
        "--timeout-s",
        type=float,
        default=PROBE_TIMEOUT_S,
        help="how long one PCM may take to open (default %(default)s s)",
    )
    dev.set_defaults(func=_cmd_devices)
