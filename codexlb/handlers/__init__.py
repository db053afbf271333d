"""What answers each route: the proxy routes (`proxy`), the client WebSocket route (`websocket`), the admin
API (`api`), the dashboard, health and metrics, and the guards every request passes (`middlewares`,
`client_auth`). Handlers parse and check, then hand the request to a carrier (`codexlb.relay`,
`codexlb.bridge`); they never call upstream themselves."""
