"""Who is asking: the identity access control proved, as a dependency for the routes that care.

With access control off every caller may do everything (as before it existed); with it on, a Basic user is an
operator when the users file marks them so (`user:hash:operator`), and a Bearer token never is (the tokens file
has no such field).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

SCOPE_KEY = "inferserver.identity"  # set in the ASGI scope by AuthMiddleware once a credential is accepted


@dataclass(frozen=True)
class Identity:
    user: str | None  # the Basic user name, `token <digest prefix>` for a Bearer token; None without access control
    operator: bool


ANYONE = Identity(None, operator=True)
NOBODY = Identity(None, operator=False)


def token_identity(digest: str) -> Identity:
    # A prefix of the token's sha256 tells tokens apart (for session ownership) without revealing the token.
    return Identity(f"token {digest[:12]}", operator=False)


# `async def`: FastAPI would run a plain `def` dependency in a worker thread.
async def identity(request: Request) -> Identity:
    found = request.scope.get(SCOPE_KEY)
    if isinstance(found, Identity):
        return found
    return ANYONE if getattr(request.app.state, "access", None) is None else NOBODY  # fail closed


OPERATORS_ONLY = "only operators may {what} (a user marked `:operator` in AUTH_USERS_FILE)"
