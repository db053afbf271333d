"""Everything that talks to the ChatGPT backend: the one client session (`session`, `tls`, `proxy`),
request and response headers (`headers`), an HTTP stream (`stream`) or a WebSocket (`websocket`) on one
account, failover across accounts until the first event (`failover`), SSE framing (`sse`), what an event
tells the pool (`state`), and the usage poll (`usage_poller`)."""
