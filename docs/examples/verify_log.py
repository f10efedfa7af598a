#!/usr/bin/env python3
"""Verify a keyledger event log without keyledger: the hash chain, every hash and every
signature, from docs/EVENTS.md alone.

Usage: verify_log.py EVENTS.jsonl SIGNING_KEYS.json

EVENTS.jsonl   one envelope per line, in seq order (`keyledger events export`, or the `data`
               of successive `GET /v1/events` pages)
SIGNING_KEYS.json   the body of `GET /v1/signing-key`

Exit 0 and "ok: N events" when everything verifies; exit 1 and "seq S: reason" at the first
event that does not. Needs the `cryptography` package (pip install cryptography).
"""

import base64
import hashlib
import json
import math
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64


def jcs_number(x):
    """An ECMAScript Number serialization (RFC 8785 section 3.2.2.3)."""
    if isinstance(x, bool):
        raise TypeError("bool is not a number")
    f = float(x)
    if math.isnan(f) or math.isinf(f):
        raise ValueError("NaN and Infinity are not JSON")
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    f = abs(f)
    # Shortest round-trip digits and exponent, from repr.
    mantissa, _, exp = repr(f).partition("e")
    exp = int(exp) if exp else 0
    if "." in mantissa:
        whole, frac = mantissa.split(".")
    else:
        whole, frac = mantissa, ""
    digits = (whole + frac).lstrip("0")
    # Position of the decimal point relative to the first significant digit.
    n = len(whole.lstrip("0")) + exp if whole.strip("0") else exp - (len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mant = digits[0] + ("." + digits[1:] if k > 1 else "")
        out = mant + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + out


def jcs_string(s):
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif c < 0x20:
            out.append("\\u%04x" % c)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jcs(v):
    """RFC 8785 canonical JSON text of a parsed JSON value."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return jcs_number(v)
    if isinstance(v, str):
        return jcs_string(v)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        # Members sorted by the UTF-16 code units of their names.
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs_string(k) + ":" + jcs(v[k]) for k in keys) + "}"
    raise TypeError("not a JSON value: %r" % (v,))


def event_hash(envelope):
    body = {k: v for k, v in envelope.items() if k not in ("hash", "signature")}
    return hashlib.sha256(jcs(body).encode("utf-8")).digest()


def load_keys(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return {
        k["id"]: Ed25519PublicKey.from_public_bytes(base64.b64decode(k["public_key"]))
        for k in doc["keys"]
        if k.get("algorithm") == "ed25519"
    }


def verify(events_path, keys_path):
    keys = load_keys(keys_path)
    prev = GENESIS
    expected = 1
    with open(events_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            env = json.loads(line)
            seq = env.get("seq")
            if seq != expected:
                return "seq %d: missing or out of order (found seq %s)" % (expected, seq)
            if env.get("prev_hash") != prev:
                return "seq %d: prev_hash does not match the previous event's hash" % seq
            digest = event_hash(env)
            if digest.hex() != env.get("hash"):
                return "seq %d: hash does not match the event's canonical bytes" % seq
            key = keys.get(env.get("signer"))
            if key is None:
                return "seq %d: unknown signer %s" % (seq, env.get("signer"))
            try:
                key.verify(base64.b64decode(env.get("signature", "")), digest)
            except (InvalidSignature, ValueError):
                return "seq %d: signature does not verify" % seq
            prev = env["hash"]
            expected += 1
    return expected - 1


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    result = verify(sys.argv[1], sys.argv[2])
    if isinstance(result, str):
        print(result)
        return 1
    print("ok: %d events" % result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
