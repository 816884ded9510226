#!/usr/bin/env python3
"""Check board files against boards/schema.json (jsonschema), on the host.

    .venv/bin/python tools/validate_board.py                 every boards/*.json
    .venv/bin/python tools/validate_board.py boards/unix.json [more files or board names]
        --no-secrets   validate the board file alone (default: merged with its secrets files,
                       as tools/deploy.py and firmware/main.py do)
        --quiet        print problems only

For each board file it checks, and prints one line per problem as `<file>: <key>: <problem>`:
  - the file is strict JSON (no duplicate keys, no trailing commas);
  - the board file itself holds no secrets (a non-empty "password"): they belong in the
    git-ignored boards/<name>.secrets.json;
  - "board" matches the file name (a warning);
  - the merged configuration (board file + secrets files: ../secrets.json, boards/secrets.json,
    boards/<name>.secrets.json, later wins) matches the schema;
  - the device's own validator (firmware/validate.py, run here under CPython) agrees; if it
    does not, that is a bug in one of the two and is reported as such;
  - an ESP32 board with ring.partition gets a partition table (tools/partitions.py): the ring
    fits in what the vfs of its flash.size can give;
  - the files mqtt.tls names (ca, cert, key) exist: for an ESP32 chip the device path /X is
    deployed from boards/X (tools/deploy.py copies it), for unix the path is read as it is.
Exit status: 0 all valid, 1 a problem, 2 usage, 12 internal error (a bug), 130 interrupted.
"""
import ast
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devtools import ArgumentParser, run_main, version  # noqa: E402
from devtools.boards import RESERVED_IN_SECRETS, deep_merge, missing_files, secret_keys as leaked_secrets, secrets_paths  # noqa: E402,F401  (one rule for deploy and here)
from partitions import problems as partition_problems  # noqa: E402  (one rule for flash and here)

ROOT = Path(__file__).resolve().parent.parent
BOARDS = ROOT / "boards"
SCHEMA = BOARDS / "schema.json"


class BoardError(Exception):
    pass


# ---- loading ------------------------------------------------------------------------------------


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise BoardError("duplicate key %r" % k)
        seen[k] = v
    return seen


def load_json(path):
    """The object in a JSON file, strictly parsed.  Raises BoardError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BoardError("cannot read: %s" % e.strerror)
    except UnicodeDecodeError as e:
        raise BoardError("not UTF-8 text (byte %d): a board file is JSON" % e.start)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=lambda c: (_ for _ in ()).throw(BoardError("%s is not JSON" % c)))
    except json.JSONDecodeError as e:
        raise BoardError("not valid JSON: line %d col %d: %s" % (e.lineno, e.colno, e.msg))
    if not isinstance(data, dict):
        raise BoardError("must hold a JSON object")
    return data


def secrets_files(board_path):
    p = Path(board_path)
    return secrets_paths(p.name[:-5] if p.name.endswith(".json") else p.name, p.parent)




# ---- the two validators ----------------------------------------------------------------------------


def schema():
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def _validator():
    import jsonschema

    s = schema()
    cls = jsonschema.validators.validator_for(s)
    cls.check_schema(s)
    return cls(s)


_UNEXPECTED = re.compile(r"\((.*) (?:was|were) unexpected\)")


def schema_errors(cfg, validator=None):
    """jsonschema's verdict as [(dotted key path, message)], each error located at the key
    it is about (a missing or unknown key, an invalid sensor name), like the device's."""
    v = validator or _validator()
    out = []
    for e in v.iter_errors(cfg):
        path = [str(p) for p in e.absolute_path]
        if "propertyNames" in e.absolute_schema_path:
            out.append((".".join(path + [str(e.instance)]), "invalid name: " + e.message))
        elif e.validator == "required":
            for k in e.validator_value:
                if isinstance(e.instance, dict) and k not in e.instance:
                    out.append((".".join(path + [k]), "required"))
        elif e.validator in ("additionalProperties", "unevaluatedProperties"):
            m = _UNEXPECTED.search(e.message)
            names = ast.literal_eval("(" + m.group(1) + ",)") if m else ()
            for k in names:
                out.append((".".join(path + [k]), "unknown key"))
        elif e.validator == "not" and e.validator_value == {}:  # NOT_ALLOWED in the schema
            out.append((".".join(path), "not used here (by this sensor kind, or on this chip)"))
        else:
            out.append((".".join(path), e.message))
    return sorted(set(out))


def device_errors(cfg):
    """The firmware's own validator (firmware/validate.py), run under CPython."""
    sys.path.insert(0, str(ROOT / "firmware"))
    try:
        import validate
    finally:
        sys.path.pop(0)
    return sorted(set(validate.validate(cfg)))


# ---- checking board files -----------------------------------------------------------------------------


def check(path, use_secrets=True, validator=None):
    """(errors, warnings, merged config or None) for one board file; each a list of lines."""
    errors, warnings = [], []
    path = Path(path)
    try:
        board = load_json(path)
    except BoardError as e:
        return ["%s" % e], warnings, None
    for p in leaked_secrets(board):
        errors.append("%s: a secret in the board file: move it to %s (git-ignored)"
                      % (p, path.with_name(path.name[:-5] + ".secrets.json").name))
    if board.get("board") != path.name[:-5]:
        warnings.append('board: %r is not the file name %r' % (board.get("board"), path.name[:-5]))
    merged = board
    secret_values = []
    if use_secrets:
        for sp in secrets_files(path):
            try:
                sec = load_json(sp)
            except BoardError as e:
                errors.append("%s: %s" % (sp, e))
                continue
            clash = [k for k in RESERVED_IN_SECRETS if k in sec]
            if clash:
                errors.append("%s: may not set %s (they belong in the board file)" % (sp, ", ".join(clash)))
            secret_values += _strings(sec)
            merged = deep_merge(merged, sec)
    found = schema_errors(merged, validator)
    for p, msg in found:
        for s in secret_values:  # never print a secret
            msg = msg.replace(repr(s), "'***'")
        errors.append("%s: %s" % (p or "(top level)", msg))
    dev = device_errors(merged)
    if {p for p, _ in dev} != {p for p, _ in found}:
        errors.append("VALIDATOR DISAGREEMENT (a bug; please report): schema says %s, the device says %s"
                      % ([p for p, _ in found] or "valid", [p for p, _ in dev] or "valid"))
    if not found:  # the layout rules need a well-formed file
        for p, msg in partition_problems(merged):
            errors.append("%s: %s" % (p, msg))
        errors += missing_files(merged, path.parent)  # the certificate files make deploy copies
    return errors, warnings, merged


def _strings(obj):
    out = []
    for v in obj.values():
        out += _strings(v) if isinstance(v, dict) else [v] if isinstance(v, str) and v else []
    return out


def board_files():
    return sorted(p for p in BOARDS.glob("*.json")
                  if p.name != "schema.json" and p.name != "secrets.json" and not p.name.endswith(".secrets.json"))


def main(argv=None):
    ap = ArgumentParser(prog="tools/validate_board.py", description=__doc__.split("\n")[0])
    ap.add_argument("--version", action="version", version="%(prog)s " + version())
    ap.add_argument("boards", nargs="*", help="board files or names (default: all in boards/)")
    ap.add_argument("--no-secrets", action="store_true", help="do not merge the secrets files")
    ap.add_argument("--quiet", action="store_true", help="print problems only")
    a = ap.parse_args(argv)
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        print("validate_board: the jsonschema package is missing: run it with .venv/bin/python (make venv)",
              file=sys.stderr)
        return 2
    paths = []
    for b in a.boards or board_files():
        p = Path(b)
        if not p.suffix:
            p = BOARDS / (b + ".json")
        paths.append(p)
    v = _validator()
    bad = 0
    for p in paths:
        shown = p.resolve().relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p
        errors, warnings, _ = check(p, not a.no_secrets, v)
        for w in warnings:
            print("%s: warning: %s" % (shown, w))
        for e in errors:
            print("%s: %s" % (shown, e))
        if errors:
            bad += 1
        elif not a.quiet:
            print("%s: valid" % shown)
    return 1 if bad else 0


if __name__ == "__main__":
    run_main("validate_board", main)
