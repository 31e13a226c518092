"""Tests of loadtest.py: what it counts (tokens/s in all and per client, replies whole or lost) from
rounds of clients, and how it tells a whole streamed reply from a broken one."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest import stream_completion, summary


def reply(tokens, whole=True):
    return dict(whole=whole, ttft=0.1, tokens=tokens, seconds=2.0)


def test_summary_adds_up_the_rounds_client_by_client_and_counts_lost_replies():
    rounds = [(4.0, [[reply(10), reply(10)], [reply(20)]]),  # (wall seconds, each client's replies)
              (6.0, [[reply(30)], [reply(0, whole=False)]])]
    s = summary(rounds)
    assert (s["clients"], s["replies"], s["whole"], s["lost"]) == (2, 5, 4, 1), s
    assert s["tokens_per_s"] == pytest.approx(70 / 10)  # whole replies' tokens over the rounds' wall time
    assert s["client_tokens_per_s"] == pytest.approx([50 / 6, 20 / 4]), s  # each client over its own time
    assert s["ttft_ms"] == pytest.approx([100] * 4)


def chunk(text=None, finish=None, usage=None):
    choices = [] if usage else [{"index": 0, "text": text or "", "finish_reason": finish}]
    return {"object": "text_completion", "choices": choices, **({"usage": usage} if usage else {})}


STREAMS = [  # (events, ends with [DONE], whether a client should count the reply whole)
    ([chunk("a"), chunk("b"), chunk(finish="length"), chunk(usage={"completion_tokens": 2})], True, True),
    ([chunk("a"), chunk(finish="stop"), chunk(usage={"completion_tokens": 1})], True, True),  # end of text
    ([chunk("a"), chunk("b"), chunk(finish="length"), chunk(usage={"completion_tokens": 2})], False, False),
    ([chunk("a"), chunk("b"), chunk(usage={"completion_tokens": 2})], True, False),  # no finish_reason
    ([chunk("a"), chunk(finish="length")], True, False),  # no usage
]


class Canned(BaseHTTPRequestHandler):
    """Answers every POST with the server-sent events of STREAMS[Canned.stream]."""
    stream = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        events, done, _ = STREAMS[Canned.stream]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + ("data: [DONE]\n\n" if done else "")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_stream_completion_tells_a_whole_reply_from_a_broken_one():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for i, (_, _, whole) in enumerate(STREAMS):
            Canned.stream = i
            got = stream_completion(f"http://127.0.0.1:{server.server_address[1]}", max_tokens=2)
            assert got["whole"] is whole and got["ttft"] > 0, (i, got)
    finally:
        server.shutdown()
        server.server_close()
