"""`inferserver serve` runs the server under uvicorn; `hash-password` and `hash-token` make lines for the
access control files."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferserver",
        description="Serve Docker-packaged medical-imaging models to 3D Slicer and the ablinfer client. "
        "Settings come from INFERSERVER_<NAME> environment variables and the Python file named by "
        "INFERSERVER_SETTINGS.",
    )
    parser.add_argument("--version", action="version", version=f"inferserver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP server", description="Run the HTTP server under uvicorn.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes; any answers any request (default: %(default)s)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: %(default)s")
    password = commands.add_parser(
        "hash-password",
        help="print a `user:hash` line for AUTH_USERS_FILE",
        description="Read a password (from stdin when it is not a terminal, else at a prompt) and print the "
        "`user:scrypt$...` line for AUTH_USERS_FILE.",
    )
    password.add_argument("user", help="the user name (no colon)")
    token = commands.add_parser(
        "hash-token",
        help="print a new API token and its line for AUTH_TOKENS_FILE",
        description="Print a new random API token (first line: give it to the client; it is stored nowhere) "
        "and its line for AUTH_TOKENS_FILE (second line).",
    )
    token.add_argument("--comment", default="", help="a note to put after the hash, e.g. who holds the token")
    return parser


def hash_password_line(args: argparse.Namespace) -> int:
    import getpass

    from .credentials import hash_password

    if ":" in args.user or not args.user.strip():
        print("inferserver: a user name must be non-empty and hold no colon", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("inferserver: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("inferserver: empty password refused", file=sys.stderr)
        return 1
    print(f"{args.user}:{hash_password(password)}")
    return 0


def hash_token_line(args: argparse.Namespace) -> int:
    from .credentials import hash_token, new_token

    token = new_token()
    comment = f"  # {args.comment}" if args.comment else ""
    print(token)
    print(f"{hash_token(token)}{comment}")
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api.auth import AccessControl
    from .app import create_app
    from .credentials import CredentialsError
    from .protocol import PROTOCOL

    try:
        settings = load_settings()
        AccessControl.from_settings(settings)  # a bad credentials file: say so before uvicorn starts
    except (SettingsError, CredentialsError) as exc:
        print(f"inferserver: cannot start: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Several workers need an import string (each process builds its app and reads the settings itself).
    target = "inferserver.app:app" if args.workers > 1 else create_app(settings)
    uvicorn.run(target, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
                timeout_graceful_shutdown=5, http=PROTOCOL)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"serve": serve, "hash-password": hash_password_line, "hash-token": hash_token_line}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
