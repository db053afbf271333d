"""The proxy's data path: read the client's request, choose an account, call upstream with failover
until the first event, relay the stream, account for it.

`request` parses and checks bodies, `headers` filters what crosses, `sse` splits streams into frames,
`upstream` opens a stream with failover, `relay` writes it to the client, `routes` wires the endpoints.
"""
