"""A faithful stand-in for the ChatGPT Codex backend and its OAuth token endpoint.

`backend` decides, `app` speaks HTTP/SSE and WebSocket, `faults` scripts what
goes wrong, `control` exposes it all as `/__sim/...` JSON, `server` runs it.
"""
