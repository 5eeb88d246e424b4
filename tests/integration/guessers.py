"""Password guessers in a process of their own (so they do not share the test's GIL with the real user's upload).

`python -m tests.integration.guessers URL COUNT SOURCE_ADDRESS`: COUNT threads send wrong Basic passwords
from SOURCE_ADDRESS until stdin closes; then one JSON line on stdout: every distinct answer with how often
it came, and on a line before the summary "started" once the first answers arrived.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter

import httpx

Answer = tuple[int, str | None, str]  # status, Retry-After, body


def guess(url: str, source: str, stop: threading.Event, answers: Counter[Answer], lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=source), timeout=60) as client:
        attempt = 0
        while not stop.is_set():
            attempt += 1
            response = client.get("/models", auth=("alice", f"guess-{threading.get_ident()}-{attempt}"))
            with lock:
                answers[(response.status_code, response.headers.get("retry-after"), response.text)] += 1


def main() -> None:
    url, count, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    stop, lock, answers = threading.Event(), threading.Lock(), Counter[Answer]()
    threads = [threading.Thread(target=guess, args=(url, source, stop, answers, lock)) for _ in range(count)]
    for thread in threads:
        thread.start()
    print("started", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    for thread in threads:
        thread.join()
    print(json.dumps([[*answer, n] for answer, n in answers.items()]), flush=True)


if __name__ == "__main__":
    main()
