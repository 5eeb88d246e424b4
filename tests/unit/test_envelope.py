"""An error no real part produces on demand: a handler that fails unexpectedly answers 500 in the envelope."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from inferserver.app import create_app
from inferserver.observability.logs import printable


def test_an_unexpected_exception_is_a_500_in_the_envelope() -> None:
    app = create_app()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"errors": [{"detail": "internal server error; the server's log has the details"}]}
    with pytest.raises(RuntimeError, match="a bug"):  # still raised to the server, which logs the traceback
        TestClient(app).get("/boom")


@pytest.mark.parametrize(
    "text, shown",
    [
        ("/a\nb", "/a\\x0ab"),
        ("/a\r\nb", "/a\\x0d\\x0ab"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\0", "nul\\x00"),
        ("line\u2028sep", "line\\u2028sep"),
        ("c1\x85", "c1\\x85"),
        ("back\\x0a", "back\\\\x0a"),
        ("é ok", "é ok"),
    ],
)
def test_printable_escapes_what_could_forge_or_hide_a_log_line(text: str, shown: str) -> None:
    assert printable(text) == shown
