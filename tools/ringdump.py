"""ringdump: show what a flash ring holds - sectors, records, message states, free
space, CRC failures, wear - and manage its outbox.

    ringdump.py RING [--records] [--json] [--label NAME | --offset N --size N]
    ringdump.py RING --drop ORDER [--drop ORDER ...] | --release ORDER [...] | --purge

RING is any form the ring takes:
  - a ring file (MQTTClient(store="path") on a host, `mqttc --store`);
  - a raw partition image, as `esptool read-flash <offset> <size> ring.img` dumps it;
  - a whole-flash dump (`esptool read-flash 0 ALL flash.bin`): the ring partition is
    found in its partition table at 0x8000 by label (--label, default "ring"), or
    given with --offset/--size;
  - a log ring directory (a path ring on a board's littlefs, copied to the host).
Reading never writes.  --drop ORDER removes the pending or held message with that
order number (first column of the listings); --release ORDER puts a held message (one
set aside because the broker dropped the link each time it got it) back at the end of
the queue; --purge removes every pending and held message and the inbound QoS 2 ids.
Each writes the change back to RING as the device would.
Exit codes: 0 done, 2 usage, 3 RING unreadable or not a ring.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from mqtt import ringfmt as F  # noqa: E402
from mqtt import recovery as R  # noqa: E402  (the format's readers)
from mqtt.medium import BlockMedium, RingError  # noqa: E402
from mqtt.ring import Ring  # noqa: E402
from mqtt.store import MemoryStore, AWAIT_PUBACK, AWAIT_PUBREC, AWAIT_PUBCOMP  # noqa: E402

STATES = {AWAIT_PUBACK: "AWAIT_PUBACK", AWAIT_PUBREC: "AWAIT_PUBREC", AWAIT_PUBCOMP: "AWAIT_PUBCOMP"}
PART_TABLE = 0x8000


class Usage(Exception):
    pass


class Bad(Exception):
    pass


class RamFlash:
    """A bytearray with the esp32.Partition block protocol: recovery and outbox edits
    run on it exactly as on the device, and the result is written back only on request."""

    def __init__(self, data):
        self.data = data

    def readblocks(self, n, buf, off=0):
        a = n * F.SECTOR + off
        buf[:] = self.data[a:a + len(buf)]

    def writeblocks(self, n, buf, off=0):
        a = n * F.SECTOR + off
        self.data[a:a + len(buf)] = bytes(x & y for x, y in zip(self.data[a:a + len(buf)], bytes(buf)))

    def ioctl(self, op, arg=0):
        if op == 4:
            return len(self.data) // F.SECTOR
        if op == 5:
            return F.SECTOR
        if op == 6:
            self.data[arg * F.SECTOR:(arg + 1) * F.SECTOR] = b"\xff" * F.SECTOR
        return 0


def find_partition(data, label):
    """(offset, size) of the data partition `label` in a whole-flash dump, or None."""
    for e in range(PART_TABLE, PART_TABLE + 0xC00, 32):
        ent = data[e:e + 32]
        if ent[:2] != b"\xaa\x50":
            break
        off, size = struct.unpack_from("<II", ent, 4)  # magic 2, type 1, subtype 1, offset, size
        if ent[12:28].rstrip(b"\0").decode("ascii", "replace") == label:
            return off, size
    return None


def load(path, label, offset, size):
    """The ring as bytes: (data, where) - where says how to write it back."""
    if os.path.isdir(path):
        names = [n for n in os.listdir(path) if n.isdigit()]
        if not names:
            raise Bad("%s: no sector files (not a log ring directory)" % path)
        n = max(3, max(int(x) for x in names) + 1)
        data = bytearray(b"\xff" * (n * F.SECTOR))
        for x in names:
            with open(os.path.join(path, x), "rb") as f:
                b = f.read(F.SECTOR)
            s = int(x) * F.SECTOR
            data[s:s + len(b)] = b
        return data, ("dir", path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise Bad("cannot read %s: %s" % (path, e.strerror or e))
    if offset is None and len(raw) > PART_TABLE + 0xC00 and raw[PART_TABLE:PART_TABLE + 2] == b"\xaa\x50":
        got = find_partition(raw, label)
        if not got:
            raise Bad("%s is a flash dump without a partition labelled %r (try --label or --offset/--size)"
                      % (path, label))
        offset, size = got
    if offset is not None:
        size = size if size is not None else len(raw) - offset
        raw = raw[offset:offset + size]
    else:
        offset = 0
    if not raw:
        raise Bad("%s is empty: not a ring" % path)
    n = max(3, (len(raw) + F.SECTOR - 1) // F.SECTOR)
    data = bytearray(raw) + b"\xff" * (n * F.SECTOR - len(raw))
    return data, ("file", path, offset, len(raw))


def save(data, where):
    if where[0] == "dir":
        for s in range(len(data) // F.SECTOR):
            sec = bytes(data[s * F.SECTOR:(s + 1) * F.SECTOR])
            p = os.path.join(where[1], str(s))
            if sec == b"\xff" * F.SECTOR:
                if os.path.exists(p):
                    os.remove(p)
                continue
            end = F.SECTOR
            while end and sec[end - 1] == 0xFF:
                end -= 1
            with open(p, "wb") as f:
                f.write(sec[:(end + 3) & ~3])
        return
    _, path, offset, length = where
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(data[:length]))


def scan(data):
    """Walk the image like recovery does, without changing it; returns a report dict."""
    sectors, records = [], []
    crc_failures = 0
    for s in range(len(data) // F.SECTOR):
        sec = bytearray(data[s * F.SECTOR:(s + 1) * F.SECTOR])
        info = {"sector": s, "state": "free", "generation": None, "erases": None, "used": 0}
        sectors.append(info)
        def read(pos, mv):
            mv[:] = sec[pos:pos + len(mv)]
        scratch = bytearray(256)
        h = R.parse_sector_header(sec)
        if h is None:
            if not R.blank(read, scratch, 0, F.SECTOR):
                info["state"] = "erased header, data after it"
            continue
        if isinstance(h, str):
            info["state"] = h
            crc_failures += 1
            continue
        info.update(state="used", generation=h[0], erases=h[1])

        def visit(pos, rtype, flags, n, seq, pid, marks):
            nonlocal crc_failures
            if not rtype:
                crc_failures += 1
                info["state"] = "used, corrupt record at %d" % pos
                return
            rec = {"sector": s, "offset": pos, "type": F.TYPES[rtype], "seq": seq, "pid": pid,
                   "bytes": F.rec_size(n), "marks": ("released " if marks & F.M_RELEASED else "") +
                   ("done" if marks & F.M_DONE else "")}
            if rtype == F.PUB and n >= 6:
                order, topic, payload = R.parse_pub(sec[pos + F.REC_HDR:pos + F.REC_HDR + n])
                rec.update(order=order, qos=flags & 3, retain=bool(flags & F.F_RETAIN),
                           released=bool(flags & F.F_RELEASED), topic=bytes(topic).decode("utf-8", "replace"),
                           payload_len=len(payload))
            records.append(rec)
        end, clean = R.scan(read, scratch, visit)
        info["used"] = end
        if not clean and info["state"] == "used":
            info["state"] = "used, torn tail"
    return {"sectors": sectors, "records": records, "crc_failures": crc_failures}


def open_store(data):
    """The store the device would rebuild from the image (on the image itself)."""
    notes = []
    st = MemoryStore(1024, Ring(BlockMedium(RamFlash(data)), log=notes.append))
    return st, notes


def messages(st):
    msgs = []
    for i in st.ordered():
        off = st.journal.loc[i]
        st.load(i)
        msgs.append({"order": st.seq[i], "pid": st.pid[i], "qos": st.qos[i], "state": STATES[st.state[i]],
                     "retain": st.retain[i], "topic": bytes(st.topic[i]).decode("utf-8", "replace"),
                     "payload_len": len(st.msg[i]), "sector": off // F.SECTOR, "offset": off % F.SECTOR})
    return msgs


def table(rows, cols):
    w = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in cols]
    out = ["  ".join(str(c).ljust(x) for c, x in zip(cols, w))]
    for r in rows:
        out.append("  ".join(str(r.get(c, "")).ljust(x) for c, x in zip(cols, w)))
    return "\n".join(out)


def parse(argv):
    o = {"path": None, "records": False, "json": False, "label": "ring", "offset": None, "size": None,
         "drop": [], "release": [], "purge": False}
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            o["help"] = True
        elif a in ("--records", "--json", "--purge"):
            o[a[2:]] = True
        elif a in ("--label", "--offset", "--size", "--drop", "--release"):
            v = next(it, None)
            if v is None:
                raise Usage("%s needs a value" % a)
            if a == "--label":
                o["label"] = v
            else:
                try:
                    n = int(v, 0)
                except ValueError:
                    raise Usage("%s takes a number (got %r)" % (a, v))
                if a in ("--drop", "--release"):
                    o[a[2:]].append(n)
                else:
                    o[a[2:]] = n
        elif a.startswith("-"):
            raise Usage("unknown option %s" % a)
        elif o["path"] is None:
            o["path"] = a
        else:
            raise Usage("one RING only (got %r too)" % a)
    if o["path"] is None and not o.get("help"):
        raise Usage("which ring? (a file, a partition or flash dump, or a log ring directory)")
    return o


def run(o):
    data, where = load(o["path"], o["label"], o["offset"], o["size"])
    rep = scan(data)
    if not any(s["state"].startswith("used") for s in rep["sectors"]) and \
            any(s["state"] not in ("free",) for s in rep["sectors"]):
        raise Bad("%s is not a ring (no valid sector header)" % o["path"])
    work = bytearray(data)
    try:
        st, notes = open_store(work)
    except RingError as e:
        raise Bad(str(e))
    if o["drop"] or o["purge"] or o["release"]:
        by_order = {st.seq[i]: i for i in st.ordered()}
        if o["purge"]:
            n = st.count + len(st.inbound) + len(st.held)
            st.clear()
        else:
            for order in o["drop"]:
                if order not in by_order and order not in st.held:
                    raise Bad("no pending or held message with order %d (see the listing)" % order)
            for order in o["release"]:
                if order not in st.held:
                    raise Bad("no held message with order %d (see the listing)" % order)
            for order in o["drop"]:
                st.discard(order)
            for order in o["release"]:
                st.release(order)
            n = len(o["drop"]) + len(o["release"])
        st.commit()
        save(work, where)
        print("ringdump: %s: %d %s, %d messages pending, %d held" % (
            o["path"], n, "released" if o["release"] and not o["drop"] else "removed", st.count, len(st.held)))
        return 0
    msgs = messages(st)
    held = []
    for order in sorted(st.held):
        h = st.held[order]
        if h[3] is None:
            st.journal.load_held(order, h)
        off = st.journal.heldloc[order]
        held.append({"order": order, "qos": h[0], "retain": h[1], "topic": bytes(h[2]).decode("utf-8", "replace"),
                     "payload_len": len(h[3]), "sector": off // F.SECTOR, "offset": off % F.SECTOR})
    used = sum(s["used"] for s in rep["sectors"] if s["state"].startswith("used"))
    erases = [s["erases"] for s in rep["sectors"] if s["erases"] is not None]
    size = len(data)
    summary = {
        "ring": o["path"], "sectors": size // F.SECTOR, "ring_bytes": size,
        "used_bytes": used, "free_bytes": size - used, "records": len(rep["records"]),
        "messages_owed": len(msgs), "messages_held": len(held), "inbound_qos2_ids": sorted(st.inbound),
        "crc_failures": rep["crc_failures"], "erases_total": sum(erases), "erases_max": max(erases or [0]),
        "format_version": F.VERSION, "recovery_notes": notes,
    }
    if o["json"]:
        print(json.dumps({"summary": summary, "sectors": rep["sectors"], "messages": msgs, "held": held,
                          "records": rep["records"]}, indent=1))
        return 0
    print("ring %s: %d sectors, %d of %d bytes used, %d free" % (o["path"], size // F.SECTOR, used, size,
                                                                size - used))
    print("records %d, CRC failures %d, erases total %d (max per sector %d)" % (
        summary["records"], summary["crc_failures"], summary["erases_total"], summary["erases_max"]))
    print()
    print(table(rep["sectors"], ["sector", "state", "generation", "erases", "used"]))
    print()
    print("messages owed (%d), in original order:" % len(msgs))
    print(table(msgs, ["order", "pid", "qos", "state", "retain", "topic", "payload_len", "sector", "offset"]))
    if held:
        print()
        print("held (%d): set aside because the broker dropped the link each time it got them;"
              " --release ORDER to retry, --drop ORDER to give up:" % len(held))
        print(table(held, ["order", "qos", "retain", "topic", "payload_len", "sector", "offset"]))
    print()
    print("inbound QoS 2 ids awaiting PUBREL: %s" % (", ".join(map(str, sorted(st.inbound))) or "none"))
    for why in notes:
        print("recovery note: " + why)
    if o["records"]:
        print()
        print(table(rep["records"], ["seq", "type", "pid", "sector", "offset", "bytes", "marks", "topic",
                                     "payload_len"]))
    return 0


def main(argv):
    try:
        o = parse(argv)
        if o.get("help"):
            print(__doc__.strip())
            return 0
        return run(o)
    except Usage as e:
        print("ringdump: %s (see --help)" % e, file=sys.stderr)
        return 2
    except Bad as e:
        print("ringdump: %s" % e, file=sys.stderr)
        return 3
    except BrokenPipeError:  # piped into head: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
