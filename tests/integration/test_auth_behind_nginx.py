"""The failure limit behind the shipped deployment (NGINX's site in front of the shipped gunicorn config): each client
is limited by its own address, which the server takes from the X-Forwarded-For of the proxy it trusts, not by the
proxy's address, so one guesser does not lock out everyone behind the same NGINX."""

from __future__ import annotations

from pathlib import Path

import httpx

from inferserver.api.credentials import hash_password

from .conftest import ServerFactory, shipped_gunicorn
from .test_deploy_nginx import start_nginx, stop_nginx


def test_guessers_are_limited_by_their_own_address_through_nginx(make_server: ServerFactory, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('right')}\nbob:{hash_password('bobs')}\n")
    server = make_server(command=shipped_gunicorn, AUTH_USERS_FILE=str(users), AUTH_MAX_FAILURES="3")
    nginx = start_nginx(tmp_path / "nginx", int(server.url.rsplit(":", 1)[1]), server.session_path)
    try:
        guesser = httpx.Client(base_url=nginx.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with guesser:
            statuses = [guesser.get("models", auth=("alice", f"guess{i}")).status_code for i in range(5)]
            assert statuses == [401, 401, 401, 429, 429]
            limited = guesser.get("models", auth=("bob", "bobs"))  # right, but never checked: no hashing now
            assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
        with httpx.Client(base_url=nginx.url) as user:  # from 127.0.0.1, through the same NGINX
            assert user.get("models", auth=("bob", "bobs")).status_code == 200
    finally:
        stop_nginx(nginx)
    assert "access control: 127.0.0.2 sent 3 failed credentials" in server.output()
    assert "access control: 127.0.0.1 sent" not in server.output()
