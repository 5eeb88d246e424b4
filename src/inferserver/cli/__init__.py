"""The command line: `inferserver serve | models check | models pull | run | client | hash-password | hash-token`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .. import __version__
from ..config import Settings, SettingsError, load_settings
from ..observability.logs import configure_logging
from . import client


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferserver",
        description="Serve Docker-packaged medical-imaging models to 3D Slicer and the ablinfer client. "
        "Settings come from INFERSERVER_<NAME> environment variables and the Python file named by "
        "INFERSERVER_SETTINGS.",
    )
    parser.add_argument("--version", action="version", version=f"inferserver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the HTTP server",
        description="Run the HTTP server under uvicorn. Slow clients are cut off: a request line and headers "
        "must arrive within INFERSERVER_HEADER_TIMEOUT seconds (default 30; else 408) and be at most "
        "INFERSERVER_MAX_HEADER_BYTES (default 65536; else 431), and an upload must send 16 KiB per "
        "INFERSERVER_UPLOAD_IDLE_TIMEOUT seconds (default 60; else 408). The soft open-file limit is raised to "
        "the hard one (each log stream holds two file descriptors). Resumable (tus) uploads at /uploads are kept "
        "INFERSERVER_TUS_EXPIRY seconds after their last PATCH (default 86400; then 410).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes; any answers any request (default: %(default)s)"
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: %(default)s"
    )

    models = commands.add_parser(
        "models", help="check the model specs, pull their images", description="Work on the model directory."
    )
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    check = model_commands.add_parser(
        "check",
        help="validate every spec; exit 1 with 'file: reason' per failure",
        description=(
            "Validate every *.json spec in DIR; print 'file: reason' for each that cannot be served and exit 1."
        ),
    )
    check.add_argument("dir", nargs="?", type=Path, help="model directory (default: the MODEL_PATH setting)")
    pull = model_commands.add_parser(
        "pull",
        help="pull every model's image that is absent (on every engine of ENGINES)",
        description="Pull every served model's image that the Docker engine (with ENGINES: each engine) does not "
        "have, with a progress bar; exit 1 naming the images (and engines) that failed.",
    )
    pull.add_argument("dir", nargs="?", type=Path, help="model directory (default: the MODEL_PATH setting)")

    run = commands.add_parser(
        "run",
        help="run one model on the local Docker engine, without a server",
        description="Run one model on the local Docker engine through the server's own runner, printing the "
        "model's log; exit 1 with the reason when the run fails.",
    )
    run.add_argument("model", metavar="SPEC_OR_ID", help="a spec file, or a model id in MODEL_PATH")
    run.add_argument(
        "--input", "-i", action="append", default=[], metavar="NAME=PATH", help="an input file (repeat per input)"
    )
    run.add_argument(
        "--param", "-p", action="append", default=[], metavar="NAME=VALUE", help="a parameter value (repeat)"
    )
    run.add_argument(
        "--output", "-o", action="append", default=[], metavar="NAME=PATH", help="where to write an output (repeat)"
    )

    password = commands.add_parser(
        "hash-password",
        help="print a `user:hash` line for AUTH_USERS_FILE",
        description="Read a password (from stdin when it is not a terminal, else at a prompt) and print the "
        "`user:scrypt$...` line for AUTH_USERS_FILE.",
    )
    password.add_argument("user", help="the user name (no colon)")
    password.add_argument(
        "--operator",
        action="store_true",
        help="mark the user an operator (`user:hash:operator`): the web page's operator view, and cancelling "
        "other users' sessions",
    )
    token = commands.add_parser(
        "hash-token",
        help="print a new API token and its line for AUTH_TOKENS_FILE",
        description="Print a new random API token (first line: give it to the client; it is stored nowhere) "
        "and its line for AUTH_TOKENS_FILE (second line).",
    )
    token.add_argument("--comment", default="", help="a note to put after the hash, e.g. who holds the token")
    client.add_parser(commands)
    return parser


def hash_password_line(args: argparse.Namespace) -> int:
    import getpass

    from ..api.credentials import hash_password

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
    print(f"{args.user}:{hash_password(password)}" + (":operator" if args.operator else ""))
    return 0


def hash_token_line(args: argparse.Namespace) -> int:
    from ..api.credentials import hash_token, new_token

    token = new_token()
    comment = f"  # {args.comment}" if args.comment else ""
    print(token)
    print(f"{hash_token(token)}{comment}")
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..api.auth import AccessControl
    from ..api.credentials import CredentialsError
    from ..app import create_app
    from ..scheduling.engines import engine_ssl
    from ..serving.loop import LOOP
    from ..serving.protocol import PROTOCOL

    try:
        settings = load_settings()
        AccessControl.from_settings(settings)  # a bad credentials file: say so before uvicorn starts
        for entry in settings.engines:  # so is a TLS file that is no certificate or key
            engine_ssl(entry)
    except (SettingsError, CredentialsError) as exc:
        print(f"inferserver: cannot start: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.LOG_FORMAT, args.log_level)
    # Several workers need an import string (each process builds its app and reads the settings itself).
    target = "inferserver.app:app" if args.workers > 1 else create_app(settings)
    # log_config=None: uvicorn's own lines go through our handler (and format); our middleware logs requests.
    uvicorn.run(
        target,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        http=PROTOCOL,
        loop=LOOP,
    )
    return 0


def models(args: argparse.Namespace, settings: Settings) -> int:
    from . import modeltools

    directory = args.dir or settings.MODEL_PATH
    if args.models_command == "check":
        return modeltools.check(directory)
    return asyncio.run(modeltools.pull(directory, engines=settings.ENGINES))


def run(args: argparse.Namespace, settings: Settings) -> int:
    from . import localrun

    try:
        spec = localrun.find_spec(args.model, settings.MODEL_PATH)
        return asyncio.run(
            localrun.run(
                spec,
                settings,
                localrun.pairs(args.input, "--input"),
                localrun.pairs(args.param, "--param"),
                localrun.pairs(args.output, "--output"),
            )
        )
    except localrun.UsageError as exc:
        print(f"inferserver run: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    standalone = {
        "serve": serve,
        "hash-password": hash_password_line,
        "hash-token": hash_token_line,
        "client": client.main,
    }
    if args.command in standalone:
        return standalone[args.command](args)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"inferserver: {exc}", file=sys.stderr)
        return 2
    if args.command == "models":
        return models(args, settings)
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
