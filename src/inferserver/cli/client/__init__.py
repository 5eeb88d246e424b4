"""`inferserver client run | batch`: run models on a remote inferserver from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ClientError, Exit
from .names import DEFAULT_URL, INSTALL_HINT, NETRC_ENV, PASSWORD_ENV, TOKEN_ENV, URL_ENV, USER_ENV

EPILOG = (
    f"The server is --url, else ${URL_ENV}, else {DEFAULT_URL}. Credentials never go on the command line: "
    f"${TOKEN_ENV} (a Bearer token), or ${USER_ENV} and ${PASSWORD_ENV}, or the server host's entry in "
    f"~/.netrc (or the file ${NETRC_ENV} names). Exit status: 0 success; 1 the run failed or the server refused "
    "(its reason is printed); 2 usage error; 3 server unreachable; 4 credentials refused."
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = commands.add_parser(
        "client",
        help="run models on a remote inferserver (run one, or a folder as a batch)",
        description="Run models on a remote inferserver: uploads (resumable through tus when the server offers "
        "it) and downloads with progress bars, the queue position and the model's log as they come.",
        epilog=EPILOG,
    )
    actions = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run",
        help="one run: upload the inputs, follow the log, download the outputs",
        description="Create a session of MODEL, upload each input, print the queue position and the model's log "
        "as they come, then download each output (to a hidden partial file, renamed when complete).",
        epilog=EPILOG,
    )
    run.add_argument("model", metavar="MODEL", help="the model id (GET /models lists them)")
    run.add_argument("-i", "--input", action="append", default=[], metavar="NAME=FILE", help="an input (repeat)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter (repeat)")
    run.add_argument(
        "-o", "--output", action="append", default=[], metavar="NAME=FILE", help="where to write an output (repeat)"
    )
    _common(run)
    batch = actions.add_parser(
        "batch",
        help="run a model over every volume in a folder, N sessions at a time",
        description="Run MODEL over every .nii, .nii.gz and .nrrd file in INPUT_DIR, JOBS sessions at a time. "
        "Outputs go to OUTPUT_DIR/<volume name without its suffix>/<output name><output extension>. A volume "
        "whose outputs all exist is skipped (outputs are renamed into place only when complete), so a batch run "
        "again continues where it stopped. OUTPUT_DIR/summary.csv and summary.json list each volume's status "
        "(complete, failed, skipped), seconds, session id and the reason of a failure.",
        epilog=EPILOG,
    )
    batch.add_argument("model", metavar="MODEL", help="the model id")
    batch.add_argument("input_dir", metavar="INPUT_DIR", type=Path, help="folder of volumes")
    batch.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path, help="where outputs and the summary go")
    batch.add_argument("-j", "--jobs", type=int, default=1, help="sessions at a time (default: %(default)s)")
    batch.add_argument(
        "-i",
        "--input",
        dest="input_name",
        metavar="NAME",
        help="the input the volumes feed (needed when the model has several)",
    )
    batch.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter (repeat)")
    batch.add_argument(
        "-o",
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="an output to fetch (repeat; default: the model's required and suggested outputs)",
    )
    _common(batch)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the server's base URL (default: ${URL_ENV} or {DEFAULT_URL})")
    parser.add_argument(
        "--retries", type=int, default=8, help="tries after a dropped connection, per transfer (default: %(default)s)"
    )
    parser.add_argument(
        "--chunk-mib",
        type=int,
        default=64,
        help="MiB per tus PATCH request; a server killed mid-upload loses at most this much (default: %(default)s)",
    )
    parser.add_argument(
        "--checksum",
        action="store_true",
        help="send each tus chunk's sha256 for the server to check; a dropped connection then sends the whole chunk "
        "again (without it only the rest; the finished file's sha256 is compared either way)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        # httpx and rich come with the client extra; a server-only install still runs every other command.
        from .batch import Batch, run_batch
        from .connection import base_url, connect, reachable
        from .remote import RunRequest, Server
        from .retry import Retries
        from .runcmd import pairs, path_pairs, run
    except ImportError as exc:
        print(f"inferserver client: {exc.name} is not installed ({INSTALL_HINT})", file=sys.stderr)
        return Exit.USAGE
    try:
        url = base_url(args.url)
        with reachable(url), connect(url) as client:
            if args.chunk_mib < 1:
                raise ClientError(f"--chunk-mib {args.chunk_mib}: must be at least 1", Exit.USAGE)
            server = Server(client, lambda: Retries(attempts=max(0, args.retries)), args.chunk_mib << 20, args.checksum)
            if args.client_command == "run":
                request = RunRequest(
                    args.model,
                    path_pairs(args.input, "-i"),
                    pairs(args.param, "-p"),
                    path_pairs(args.output, "-o"),
                )
                return run(server, request)
            batch = Batch(
                args.model,
                args.input_dir,
                args.output_dir,
                args.jobs,
                args.input_name,
                pairs(args.param, "-p"),
                args.output,
            )
            return run_batch(server, batch)
    except ClientError as exc:
        print(f"inferserver client: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("inferserver client: interrupted", file=sys.stderr)
        return Exit.FAILED
