"""Carrying Responses over WebSockets: client sockets relayed upstream (`websocket`)."""
