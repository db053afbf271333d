"""Carrying Responses over upstream WebSockets: client WebSockets relayed upstream (`websocket`), and plain
HTTP `/responses` calls carried over one long-lived upstream WebSocket per conversation (`http`, `sessions`)."""
