"""`inferserver serve`: run the server under uvicorn."""

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
    return parser


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"inferserver: cannot start: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Several workers need an import string (each process builds its app and reads the settings itself).
    target = "inferserver.app:app" if args.workers > 1 else create_app(settings)
    uvicorn.run(target, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
