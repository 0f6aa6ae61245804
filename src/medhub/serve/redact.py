"""No credential in a log line: the access log shows ``?token=[redacted]``, never the token.

The API token may travel in the query string (``?token=``, documented for server-sent events
and download links, where a client cannot set a header), and uvicorn's access log writes every
request's path with its query. :class:`RedactCredentials` rewrites each record of the access
log before any handler sees it: the values of credential-like query parameters, and the
server's own token wherever it appears, become ``[redacted]``.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
CREDENTIAL_PARAMETERS = ("token", "access_token", "api_key", "apikey", "key", "password", "secret", "auth")
_QUERY_VALUE = re.compile(r"(?i)([?&](?:" + "|".join(CREDENTIAL_PARAMETERS) + r")=)[^&#\s\"]*")
ACCESS_LOGGERS = ("uvicorn.access",)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with credential-like query values and each of ``secrets`` replaced by ``[redacted]``."""
    text = _QUERY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class RedactCredentials(logging.Filter):
    """A logging filter that redacts credentials in a record's message and arguments (and never drops it)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__("medhub-redact")
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg, self.secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a, self.secrets) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v, self.secrets) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install_redaction(token: str | None) -> None:
    """Put the filter on the access loggers (once; the token of the latest app wins)."""
    secrets = (token,) if token else ()
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, RedactCredentials)]:
            logger.removeFilter(existing)
        logger.addFilter(RedactCredentials(secrets))
