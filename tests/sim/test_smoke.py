from tests.simclient import body, post_responses, user, ws_connect, ws_turn


async def test_http_and_ws_answer(sim, http):
    resp, events = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 200 and events[-1]["type"] == "response.completed"
    ws = await ws_connect(http, sim)
    events = await ws_turn(ws, body(user("hi")))
    assert events[-1]["type"] == "response.completed"
    await ws.close()
