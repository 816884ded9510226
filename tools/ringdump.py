"""ringdump: print a flash ring file's sectors, records, message states, free space,
CRC failures and wear (write/erase counters) in readable tables.

    python3 tools/ringdump.py RING_FILE [--size BYTES] [--records] [--json]

Reads the file only (it never repairs or writes).  Format: docs/ring-format.md.
"""
import json
import os
import struct
import sys
from binascii import crc32

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from mqtt import ring  # noqa: E402
from mqtt.ring import (  # noqa: E402
    SECTOR, SEC_HDR, REC_HDR, MARKS, MAGIC, TYPES, PUB, F_RETAIN, F_RELEASED, RingStore, RingError, rec_size)
from mqtt.store import AWAIT_PUBACK, AWAIT_PUBREC, AWAIT_PUBCOMP  # noqa: E402

STATES = {AWAIT_PUBACK: "AWAIT_PUBACK", AWAIT_PUBREC: "AWAIT_PUBREC", AWAIT_PUBCOMP: "AWAIT_PUBCOMP"}


def scan(data, nsec):
    """Walk the file like recovery does, without changing it; returns a report dict."""
    sectors = []
    records = []
    crc_failures = 0
    for s in range(nsec):
        base = s * SECTOR
        raw = data[base : base + SECTOR]
        info = {"sector": s, "state": "missing", "generation": None, "erases": None, "used": 0}
        sectors.append(info)
        if len(raw) < SEC_HDR:
            continue
        hdr = raw[:SEC_HDR]
        if hdr == b"\xff" * SEC_HDR:
            info["state"] = "free"
            continue
        if hdr[:4] != MAGIC or struct.unpack_from("<I", hdr, 16)[0] != crc32(hdr[:16]):
            info["state"] = "bad header"
            crc_failures += 1
            continue
        g, e, _ = struct.unpack_from("<III", hdr, 4)
        info.update(state="used", generation=g, erases=e)
        pos = SEC_HDR
        while pos + REC_HDR + 4 <= len(raw):
            if raw[pos] == 0xFF:
                if raw[pos : pos + REC_HDR] != b"\xff" * REC_HDR:
                    info["state"] = "used, torn tail"
                break
            rtype, flags, n, seq, pid = struct.unpack_from("<BBHIH", raw, pos)
            size = rec_size(n)
            end = pos + REC_HDR + n
            good = rtype in TYPES and pos + size <= len(raw) and struct.unpack_from("<I", raw, end)[0] == \
                crc32(raw[pos + REC_HDR : end], crc32(raw[pos : pos + MARKS]))
            if not good:
                crc_failures += 1
                info["state"] = "used, corrupt record at %d" % pos
                break
            marks = raw[pos + MARKS : pos + REC_HDR]
            rec = {"sector": s, "offset": pos, "type": TYPES[rtype], "seq": seq, "pid": pid, "bytes": size,
                   "marks": ("released " if marks[:2] == b"\0\0" else "") + ("done" if marks[2:] == b"\0\0" else "")}
            if rtype == PUB and n >= 6:
                order, tl = struct.unpack_from("<IH", raw, pos + REC_HDR)
                body = raw[pos + REC_HDR + 6 : end]
                rec.update(order=order, qos=flags & 3, retain=bool(flags & F_RETAIN),
                           released=bool(flags & F_RELEASED), topic=body[:tl].decode("utf-8", "replace"),
                           payload_len=len(body) - tl)
            records.append(rec)
            pos += size
        info["used"] = pos
    return {"sectors": sectors, "records": records, "crc_failures": crc_failures}


def recover(path, size, records):
    """What the store itself rebuilds: recovery runs on a temporary copy, so the file
    given is never written."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "ring")
        shutil.copyfile(path, copy)
        try:
            st = RingStore(copy, size, capacity=1024)
        except RingError as e:
            return [], [], [str(e)]
        where = {(r["sector"] * SECTOR + r["offset"]): r for r in records}
        msgs = []
        for i in st.ordered():
            r = where.get(st.loc[i], {})
            msgs.append({"order": st.seq[i], "pid": st.pid[i], "qos": st.qos[i], "state": STATES[st.state[i]],
                         "retain": st.retain[i], "topic": r.get("topic"), "payload_len": r.get("payload_len"),
                         "sector": st.loc[i] // SECTOR, "offset": st.loc[i] % SECTOR})
        inbound = sorted(st.inbound)
        reasons = st.reasons
        st.close()
    return msgs, inbound, reasons


def table(rows, cols):
    w = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols]
    out = ["  ".join(str(c).ljust(x) for c, x in zip(cols, w))]
    for r in rows:
        out.append("  ".join(str(r.get(c, "")).ljust(x) for c, x in zip(cols, w)))
    return "\n".join(out)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    path = argv[0]
    size = None
    if "--size" in argv:
        size = int(argv[argv.index("--size") + 1])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print("ringdump: %s" % e, file=sys.stderr)
        return 1
    nsec = (size or max(len(data), SECTOR)) // SECTOR
    rep = scan(data, nsec)
    msgs, inbound, reasons = recover(path, nsec * SECTOR, rep["records"])
    used = sum(s["used"] for s in rep["sectors"] if s["state"].startswith("used"))
    erases = [s["erases"] for s in rep["sectors"] if s["erases"] is not None]
    summary = {
        "file": path, "file_bytes": len(data), "sectors": nsec, "ring_bytes": nsec * SECTOR,
        "used_bytes": used, "free_bytes": nsec * SECTOR - used, "records": len(rep["records"]),
        "messages_owed": len(msgs), "inbound_qos2_ids": inbound, "crc_failures": rep["crc_failures"],
        "erases_total": sum(erases), "erases_max": max(erases) if erases else 0,
        "format_version": ring.VERSION, "recovery_notes": reasons,
    }
    if "--json" in argv:
        print(json.dumps({"summary": summary, "sectors": rep["sectors"], "messages": msgs,
                          "records": rep["records"]}, indent=1))
        return 0
    print("ring %s: %d sectors, %d of %d bytes used, %d free" % (
        path, nsec, used, nsec * SECTOR, nsec * SECTOR - used))
    print("records %d, CRC failures %d, erases total %d (max per sector %d)" % (
        summary["records"], summary["crc_failures"], summary["erases_total"], summary["erases_max"]))
    print()
    print(table(rep["sectors"], ["sector", "state", "generation", "erases", "used"]))
    print()
    print("messages owed (%d), in original order:" % len(msgs))
    print(table(msgs, ["order", "pid", "qos", "state", "retain", "topic", "payload_len", "sector", "offset"]))
    print()
    print("inbound QoS 2 ids awaiting PUBREL: %s" % (", ".join(map(str, inbound)) or "none"))
    for why in reasons:
        print("recovery note: " + why)
    if "--records" in argv:
        print()
        print(table(rep["records"], ["seq", "type", "pid", "sector", "offset", "bytes", "marks", "topic",
                                     "payload_len"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
