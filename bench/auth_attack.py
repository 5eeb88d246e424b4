"""A 50 MB authenticated upload alone and while 64 clients send wrong passwords (the security issue's measure).

    python -m bench.auth_attack [SETTING=VALUE ...]     # from the repository root, with the venv's python

Starts `inferserver serve` (the code on PYTHONPATH) with access control on and any given settings (e.g.
AUTH_MAX_FAILURES=100000000 to see the hashing executor alone, without the failure limit), uploads twice alone,
then once while the guessers of tests/integration/guessers.py run from 127.0.0.2, and prints the times and the
guessers' answers by status.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx

from inferserver.api.credentials import hash_password
from tests.integration.conftest import start_server, stop_and_check, write_nifti
from tests.integration.test_auth_under_attack import start_guessers, stop_guessers, timed_upload

USERS = ("alice", "bob", "carol", "dave")


def main() -> None:
    settings = dict(arg.split("=", 1) for arg in sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="auth-attack-") as name:
        tmp = Path(name)
        users = tmp / "users"
        users.write_text("".join(f"{u}:{hash_password(u + ' pw')}\n" for u in USERS))
        server = start_server(tmp / "server", AUTH_USERS_FILE=str(users), **settings)
        try:
            source = write_nifti(tmp / "big.nii.gz", 50)
            sessions = []
            for user in ("bob", "dave"):
                session_id, alone = timed_upload(server, source, (user, user + " pw"))
                sessions.append(session_id)
                print(f"upload of {source.stat().st_size} bytes alone: {alone:.3f} s")
            guessers = start_guessers(server)
            time.sleep(2)
            session_id, attacked = timed_upload(server, source, ("carol", "carol pw"))
            sessions.append(session_id)
            answers = stop_guessers(guessers)
            by_status = {s: sum(n for status, _, _, n in answers if status == s) for s in {a[0] for a in answers}}
            print(f"upload with 64 guessers: {attacked:.3f} s; guessers' answers by status: {by_status}")
            with httpx.Client(base_url=server.url, auth=("bob", "bob pw")) as client:
                for session_id in sessions:  # let the runs finish, so no container is left behind
                    while client.get(f"/sessions/{session_id}").json()["data"]["status"] not in ("complete", "failed"):
                        time.sleep(0.2)
        finally:
            stop_and_check([server])


if __name__ == "__main__":
    main()
