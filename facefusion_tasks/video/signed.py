"""URLs this project signed itself: the one network input ffmpeg may open, and never logged."""

from __future__ import annotations

import re


class SignedUrl(str):
    """A URL this project signed itself, for an object in an allowed bucket (objects.presign):
    the one network input ffmpeg may open. Anything else, a user's http:// included, is a
    path and gets the file protocol only. Its text carries a signature: never log it (redact)."""

    def __repr__(self) -> str:
        return f"SignedUrl({redact(self)!r})"


#: A URL's query string: where a presigned URL keeps its signature and credential scope.
_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?'\"]*)\?[^\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL's query string removed (signatures, credential scopes), for
    ffmpeg's messages and command lines before anything logs or stores them."""
    return _QUERY.sub(r"\1", text)
