# Strict JSON syntax check of a board or secrets file, before json.loads sees it.
# MicroPython's json.loads is lenient: it accepts trailing commas, a missing colon, and
# returns {} for a truncated '{"a":'.  A half-written board file must not become a
# half-empty configuration, so the text is checked strictly first (no values built).

_WS = " \t\r\n"


class _Syntax(Exception):
    pass


def check_syntax(text):
    """None if text is one well-formed JSON value, else 'line L col C: problem'.
    Also reports duplicate keys (JSON parsers silently keep the last one)."""
    try:
        i = _value(text, _ws(text, 0), 0)
        i = _ws(text, i)
        if i != len(text):
            raise _Syntax("unexpected %r after the end of the document" % text[i], i)
    except _Syntax as e:
        msg, pos = e.args
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return "line %d col %d: %s" % (line, col, msg)
    return None


def _ws(t, i):
    n = len(t)
    while i < n and t[i] in _WS:
        i += 1
    return i


def _value(t, i, depth):
    if depth > 20:
        raise _Syntax("nested too deeply", i)
    if i >= len(t):
        raise _Syntax("unexpected end of file (truncated?)", i)
    c = t[i]
    if c == "{":
        i = _ws(t, i + 1)
        seen = []
        if i < len(t) and t[i] == "}":
            return i + 1
        while True:
            if i >= len(t):
                raise _Syntax("unexpected end of file (truncated?)", i)
            if t[i] != '"':
                raise _Syntax("expected a key in double quotes", i)
            start = i
            i = _string(t, i)
            key = t[start:i]
            if key in seen:
                raise _Syntax("duplicate key %s" % key, start)
            seen.append(key)
            i = _ws(t, i)
            if i >= len(t) or t[i] != ":":
                raise _Syntax("expected ':' after key %s" % key, i)
            i = _value(t, _ws(t, i + 1), depth + 1)
            i = _ws(t, i)
            if i < len(t) and t[i] == ",":
                comma = i
                i = _ws(t, i + 1)
                if i < len(t) and t[i] == "}":
                    raise _Syntax("trailing comma before '}'", comma)
                continue
            if i < len(t) and t[i] == "}":
                return i + 1
            raise _Syntax("expected ',' or '}'", i)
    if c == "[":
        i = _ws(t, i + 1)
        if i < len(t) and t[i] == "]":
            return i + 1
        while True:
            i = _ws(t, _value(t, i, depth + 1))
            if i < len(t) and t[i] == ",":
                comma = i
                i = _ws(t, i + 1)
                if i < len(t) and t[i] == "]":
                    raise _Syntax("trailing comma before ']'", comma)
                continue
            if i < len(t) and t[i] == "]":
                return i + 1
            raise _Syntax("expected ',' or ']'", i)
    if c == '"':
        return _string(t, i)
    for word in ("true", "false", "null"):
        if t.startswith(word, i):
            return i + len(word)
    return _number(t, i)


def _string(t, i):
    n = len(t)
    i += 1
    while i < n:
        c = t[i]
        if c == '"':
            return i + 1
        if c == "\\":
            if i + 1 >= n or t[i + 1] not in '"\\/bfnrtu':
                raise _Syntax("bad escape in string", i)
            i += 2
            continue
        if c < " ":
            raise _Syntax("control character in string (unterminated string?)", i)
        i += 1
    raise _Syntax("unterminated string", i)


def _number(t, i):
    start = i
    n = len(t)
    if i < n and t[i] == "-":
        i += 1
    digits = i
    while i < n and "0" <= t[i] <= "9":
        i += 1
    if i == digits:
        raise _Syntax("unexpected %r" % t[start] if start < n else "unexpected end", start)
    if t[digits] == "0" and i - digits > 1:
        raise _Syntax("leading zero in number", start)
    if i < n and t[i] == ".":
        i += 1
        d = i
        while i < n and "0" <= t[i] <= "9":
            i += 1
        if i == d:
            raise _Syntax("digit expected after '.'", i)
    if i < n and t[i] in "eE":
        i += 1
        if i < n and t[i] in "+-":
            i += 1
        d = i
        while i < n and "0" <= t[i] <= "9":
            i += 1
        if i == d:
            raise _Syntax("digit expected in exponent", i)
    return i
