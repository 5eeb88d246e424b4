"""gunicorn settings for inferserver: `gunicorn -c deploy/gunicorn.conf.py inferserver.app:app`.

Every value can be changed without editing this file, through the environment (the systemd unit's
EnvironmentFile, `docker run -e`):

    INFERSERVER_BIND             where to listen (default 127.0.0.1:8000, the NGINX site's upstream);
                                 unix:/run/inferserver/inferserver.sock for a socket; several, comma-separated
    INFERSERVER_WORKERS          worker processes (default 1, see below)
    INFERSERVER_WORKER_TIMEOUT   seconds a worker's event loop may stay stuck before it is restarted (default 300)
    INFERSERVER_GRACEFUL_TIMEOUT seconds a stopping worker gets to end its runs and streams (default 30)
    FORWARDED_ALLOW_IPS          proxies whose X-Forwarded-* headers are trusted (gunicorn's own variable;
                                 default 127.0.0.1,::1, right when NGINX runs on the same host)

The server's own settings (MODEL_PATH, SESSION_PATH, ...) are read by the application as usual, from
INFERSERVER_<NAME> and the file named by INFERSERVER_SETTINGS.
"""

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"gunicorn.conf.py: {name}={value!r} is not a whole number") from None


bind = [b.strip() for b in os.environ.get("INFERSERVER_BIND", "127.0.0.1:8000").split(",") if b.strip()]

# One worker by default: uploads, logs and downloads are async, so one process already serves many clients,
# and WORKER_THREADS (not this) is what runs several models at once. More workers are safe (sessions live in
# the database and one process dispatches runs: README, "Durable state"); raise INFERSERVER_WORKERS for more
# concurrent requests.
workers = _env_int("INFERSERVER_WORKERS", 1)

# The maintained home of uvicorn's gunicorn worker (uvicorn.workers.UvicornWorker is the same class, and
# deprecated since uvicorn 0.30).
worker_class = "uvicorn_worker.UvicornWorker"

# For uvicorn workers `timeout` is a heartbeat the event loop sends, not a request limit: log streams and
# uploads of any length are unaffected. It only restarts a worker whose loop has been stuck this long.
timeout = _env_int("INFERSERVER_WORKER_TIMEOUT", 300)

# SIGTERM/SIGHUP: stop accepting, let open requests finish for this long, then SIGKILL. A log stream stays
# open until its run ends, so uvicorn is told (post_worker_init) to give up on open connections 10 s earlier
# and still run the application's shutdown instead of being killed in the middle of it.
graceful_timeout = _env_int("INFERSERVER_GRACEFUL_TIMEOUT", 30)

# Longer than NGINX's upstream keepalive_timeout (60 s), so NGINX, not gunicorn, closes idle connections.
keepalive = 75

# gunicorn ≥ 25.1 opens a management socket in $XDG_RUNTIME_DIR or ~/.gunicorn: nothing here uses it, and
# several servers of one user (or a read-only home under systemd) would trip over it.
control_socket_disable = True

# No access log of gunicorn's: the application logs every request itself (inferserver.access, as under `inferserver
# serve`), and uvicorn's line beside it cost a fifth of a status poll. (uvicorn's worker decides by whether this
# log has a handler; uvicorn's `access_log` setting is read too early to change here.)
accesslog = None
errorlog = "-"
loglevel = "info"
proc_name = "inferserver"


def post_worker_init(worker) -> None:
    config = getattr(worker, "config", None)  # the uvicorn Config the worker runs
    if config is not None:
        from inferserver.serving.loop import LOOP
        from inferserver.serving.protocol import PROTOCOL

        config.timeout_graceful_shutdown = max(1, graceful_timeout - 10)
        # The protocol `inferserver serve` runs: MAX_HEADER_BYTES (431) and HEADER_TIMEOUT (408) hold here too,
        # so half-sent heads cannot pile up open connections. The worker loads it when its server starts.
        config.http = PROTOCOL
        config.loop = LOOP  # asyncio's: accepts new connections promptly while busy (serving/loop.py)
