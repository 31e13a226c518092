"""Load an OpenAI-compatible server with streaming clients, and measure what each one gets.

bench.py's serve section runs serve.py as a user would and loads it from here:

    load_test(url, clients, seconds, max_tokens)   threads streaming completions back to back
    summary(rounds)                                tokens/s in all and per client, time to first
                                                   token, replies that came whole or were lost

Standard library only: http.client, threads and json, so that the figures include no client
library's overhead but the server's.
"""
import http.client
import json
import threading
import time


def load_test(url, clients, seconds, max_tokens):
    """(wall seconds, each client's replies): `clients` threads, each streaming completions one
    after another until `seconds` have passed."""
    replies = [[] for _ in range(clients)]

    def client(mine, deadline):
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                mine.append(stream_completion(url, max_tokens))
            except (OSError, ValueError, LookupError):  # refused, cut off or malformed: lost
                mine.append(dict(whole=False, ttft=0.0, tokens=0, seconds=time.perf_counter() - t0))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(mine, t0 + seconds)) for mine in replies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, replies


def summary(parts):
    """One figure set from the rounds of a phase: client i is the same client in every round."""
    wall = sum(w for w, _ in parts)
    clients = [[r for _, replies in parts for r in replies[i]] for i in range(len(parts[0][1]))]
    done = [r for mine in clients for r in mine]
    whole = [r for r in done if r["whole"]]
    per_client = [sum(r["tokens"] for r in mine) / max(sum(r["seconds"] for r in mine), 1e-9)
                  for mine in clients]
    return {"clients": len(clients), "replies": len(done), "whole": len(whole),
            "lost": len(done) - len(whole),
            "tokens_per_s": sum(r["tokens"] for r in whole) / wall, "client_tokens_per_s": per_client,
            "ttft_ms": [r["ttft"] * 1e3 for r in whole]}


def stream_completion(url, max_tokens):
    """One streamed completion: time to first token, tokens, seconds, and whether it came whole:
    text_completion chunks, the last with a finish_reason, then the usage, then [DONE]."""
    body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    host, port = url.removeprefix("http://").split(":")
    conn, t0 = http.client.HTTPConnection(host, int(port), timeout=120), time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response, events, ttft = conn.getresponse(), [], None
    for line in filter(lambda line: line.startswith(b"data: "), response):
        events.append(line[6:].strip())
        ttft = ttft or time.perf_counter() - t0
    conn.close()
    chunks = [json.loads(e) for e in events if e != b"[DONE]"]
    tokens = (chunks[-1].get("usage") or {}).get("completion_tokens", 0) if chunks else 0
    whole = (response.status == 200 and events[-1:] == [b"[DONE]"] and len(chunks) > 2 and tokens > 0
             and {c["object"] for c in chunks} == {"text_completion"}
             and chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length"))
    return {"whole": whole, "ttft": ttft or 0.0, "tokens": tokens, "seconds": time.perf_counter() - t0}
