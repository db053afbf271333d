"""Pure translations between client-facing APIs and the Codex Responses backend.

No I/O: plain dicts in, plain dicts out. `chat` turns Chat Completions requests
into Responses requests and Responses events into chat chunks or a whole
`chat.completion`; `responses_aggregate` turns a Responses event stream into
the final Response object for `stream: false` clients.
"""

from codexlb.translate.errors import TranslationError, UpstreamFailed

__all__ = ["TranslationError", "UpstreamFailed"]
