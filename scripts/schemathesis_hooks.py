"""schemathesis hooks for scripts/schemathesis.sh.

Schemathesis learns key ids from responses (GET /v1/me, listings) and then resets, revokes or
disables those keys. Done to the admin key it tests with, that locks the run out (every later
request is 401, then 429). Requests naming that key's id, in any spelling a UUID parser
accepts, are sent for a fresh random id instead.

Generated `Idempotency-Key` values are few and short ("0", "!"), so most would name an earlier,
different request and get 422 `idempotency_key_reused`, which is right but tests nothing else.
A well-formed one is made unique; malformed ones are sent as generated.
"""

import os
import re
import uuid

import schemathesis

PROTECTED = os.environ.get("KEYLEDGER_PROTECTED_ID", "").replace("-", "").lower()


def _normalise(value):
    text = str(value).lower()
    text = text.removeprefix("urn:uuid:")
    return re.sub(r"[{}\-]", "", text)


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters or {}
    ident = params.get("id")
    if PROTECTED and ident is not None and PROTECTED in _normalise(ident):
        params["id"] = str(uuid.uuid4())
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(r"[\x21-\x7e]{1,218}", key):
        headers["Idempotency-Key"] = f"{key}-{uuid.uuid4()}"
