"""The processes under test: a private Docker engine, the old server (uWSGI), inferserver (uvicorn), one NGINX.

Both servers run on the same private engine (tests/integration/gpu_engine.py: its own data root and network
namespace, and a fake NVIDIA hook, because the old server asks for every GPU on every run and fails outright on
an engine without a GPU driver). NGINX fronts both: the old server exactly as its docs prescribe (uwsgi_pass,
request and response buffering on), inferserver with streaming settings, plus a static file server and a WebDAV
PUT sink as the raw loopback references.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import REPO, TEST_MODELS
from tests.integration.conftest import free_port
from tests.integration.gpu_engine import Engine, start_engine, stop_engine

OLD_VENV = REPO / "bench" / ".cache" / "oldvenv"
IMAGES = ["inferserver-test/copy:1", "inferserver-test/sleep:1"]
MODELS = ["copy.json", "sleep.json"]


@dataclass
class Stack:
    work: Path
    engine: Engine
    old_url: str = ""
    new_url: str = ""
    mount_url: str = ""
    static_url: str = ""
    sink_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def pids(self, name: str) -> list[int]:
        """The server's processes: the one we started and its children (uWSGI workers, if any)."""
        root = self.processes[name].pid
        found = [root]
        for child in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, IndexError):
                if int((child / "stat").read_text().rsplit(")", 1)[1].split()[1]) == root:
                    found.append(int(child.name))
        return found

    def rss_kib(self, name: str) -> int:
        total = 0
        for pid in self.pids(name):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def docker(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        return self.engine.docker(*args, timeout=timeout)


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {seconds} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _model_dir(work: Path) -> Path:
    models = work / "models"
    models.mkdir()
    for name in MODELS:
        shutil.copy(TEST_MODELS / name, models / name)
    return models


def _start_old(stack: Stack, models: Path) -> Path:
    """ablinfer 1.2.3's Flask app under uWSGI, configured as its docs say (one process: sessions live in it)."""
    settings = stack.work / "old-settings.py"
    settings.write_text(f'MODEL_PATH = "{models}"\nSESSION_PATH = "{stack.work / "old-sessions"}"\n')
    sock = stack.work / "old.sock"
    ini = stack.work / "old-uwsgi.ini"
    ini.write_text(
        "[uwsgi]\n"
        "plugin = python3\n"
        f"chdir = {stack.work}\n"
        f"virtualenv = {OLD_VENV}\n"
        "mount = /=ablinfer.inferserver:app\n"
        "manage-script-name = true\n"
        f"socket = {sock}\n"
        "enable-threads = true\n"
        # The docs leave threads at uWSGI's default (1): one open log stream would then stall everything.
        # 32 threads is the deployment CONTRACT.md describes.
        "threads = 32\n"
        f"env = INFERSERVER_SETTINGS={settings}\n"
        f"env = DOCKER_HOST={stack.engine.host}\n"
    )
    log = stack.work / "old-uwsgi.log"
    with log.open("wb") as out:
        stack.processes["old"] = subprocess.Popen(
            ["uwsgi", "--ini", str(ini)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return sock


def _start_new(stack: Stack, models: Path, name: str = "new", **settings: str) -> int:
    port = free_port()
    env = {
        **os.environ,
        "DOCKER_HOST": stack.engine.host,
        "INFERSERVER_MODEL_PATH": str(models),
        "INFERSERVER_SESSION_PATH": str(stack.work / f"{name}-sessions"),
        **{f"INFERSERVER_{key}": value for key, value in settings.items()},
    }
    log = stack.work / f"{name}-uvicorn.log"
    with log.open("wb") as out:
        stack.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "inferserver", "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return port


NGINX_CONF = """\
daemon off;
user root;  # the bench runs as root; the workers must reach the uWSGI socket and write the sink
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    uwsgi_temp_path {work}/nginx-uwsgi;
    fastcgi_temp_path {work}/nginx-fastcgi;
    scgi_temp_path {work}/nginx-scgi;

    # The old server, as seed-inferserver.rst prescribes.
    server {{
        listen 127.0.0.1:{old_port};
        root {work}/empty;
        location / {{
            client_max_body_size 0;
            try_files $uri @inferserver;
        }}
        location @inferserver {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:{old_sock};
            uwsgi_read_timeout 3600s;
            uwsgi_send_timeout 3600s;
        }}
    }}

    # inferserver as deploy/nginx/inferserver.conf has it: uploads streamed through, downloads sent by NGINX
    # from the session directory on the server's X-Accel-Redirect.
    upstream inferserver {{
        server 127.0.0.1:{new_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{new_port_front};
        location / {{
            proxy_pass http://inferserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Accel-Mapping {work}/new-sessions/=/_inferserver_files/;
            proxy_request_buffering off;
            proxy_buffering off;
            client_max_body_size 0;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
        location ^~ /_inferserver_files/ {{
            internal;
            alias {work}/new-sessions/;
        }}
    }}

    # Raw references: a static file, and a WebDAV PUT that writes the body to disk.
    server {{
        listen 127.0.0.1:{static_port};
        root {work}/static;
    }}
    server {{
        listen 127.0.0.1:{sink_port};
        root {work}/sink;
        client_max_body_size 0;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
        }}
    }}
}}
"""


def _start_nginx(stack: Stack, old_sock: Path, new_port: int) -> None:
    ports = {name: free_port() for name in ("old_port", "new_port_front", "static_port", "sink_port")}
    for sub in ("empty", "static", "sink", "nginx-body"):
        (stack.work / sub).mkdir(exist_ok=True)
    conf = stack.work / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            work=stack.work,
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            old_sock=old_sock,
            new_port=new_port,
            **ports,
        )
    )
    log = stack.work / "nginx.log"
    with log.open("wb") as out:
        stack.processes["nginx"] = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(stack.work)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    time.sleep(0.5)
    if stack.processes["nginx"].poll() is not None:
        raise RuntimeError(f"nginx exited: {(stack.work / 'nginx-error.log').read_text(errors='replace')}")
    stack.old_url = f"http://127.0.0.1:{ports['old_port']}"
    stack.new_url = f"http://127.0.0.1:{ports['new_port_front']}"
    stack.static_url = f"http://127.0.0.1:{ports['static_port']}"
    stack.sink_url = f"http://127.0.0.1:{ports['sink_port']}"


def _add_data_dir(stack: Stack) -> None:
    """Give each fixture image an empty /data (its docker.data_path), under the same tag, on the private engine.

    The old server's put_archive into /data fails with 404 when the directory is absent (real model images
    have it); inferserver creates it. Both servers then run the very same image.
    """
    empty = stack.work / "data"
    empty.mkdir()
    for image in IMAGES:
        created = stack.docker("create", image)
        cid = created.stdout.decode().strip()
        if created.returncode != 0:
            raise RuntimeError(f"docker create {image}: {created.stderr.decode()}")
        for args in (("cp", str(empty), f"{cid}:/data"), ("commit", cid, image), ("rm", cid)):
            done = stack.docker(*args)
            if done.returncode != 0:
                raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.decode()}")


@contextlib.contextmanager
def running_stack(work: Path) -> Iterator[Stack]:
    engine = start_engine(IMAGES)
    stack = Stack(work, engine)
    try:
        _add_data_dir(stack)
        models = _model_dir(work)
        old_sock = _start_old(stack, models)
        new_port = _start_new(stack, models)
        # A second inferserver with the inputs bind-mounted (INPUT_STAGING=mount), measured for (f) only,
        # directly: the runs do not go through NGINX.
        stack.mount_url = f"http://127.0.0.1:{_start_new(stack, models, 'mount', INPUT_STAGING='mount')}"
        _start_nginx(stack, old_sock, new_port)
        _wait_http(stack.new_url + "/", stack.processes["new"], work / "new-uvicorn.log")
        _wait_http(stack.mount_url + "/", stack.processes["mount"], work / "mount-uvicorn.log")
        _wait_http(stack.old_url + "/", stack.processes["old"], work / "old-uwsgi.log")
        yield stack
    finally:
        for name, process in reversed(stack.processes.items()):
            if process.poll() is None:
                # uWSGI ends on SIGINT, NGINX on SIGQUIT (graceful) or SIGTERM; uvicorn on SIGINT.
                process.send_signal(signal.SIGTERM if name == "nginx" else signal.SIGINT)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        stop_engine(engine)


def versions() -> dict[str, str]:
    """What was measured: package versions of both servers and the front end."""
    pip = subprocess.run(
        [str(OLD_VENV / "bin" / "python"), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True
    )
    old = {p["name"].lower(): p["version"] for p in json.loads(pip.stdout or "[]")}
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    uwsgi = subprocess.run(["uwsgi", "--version"], capture_output=True, text=True).stdout.strip()
    from inferserver import __version__

    return {
        "old": ", ".join(
            f"{k} {old[k]}" for k in ("ablinfer", "flask", "werkzeug", "docker", "requests", "urllib3") if k in old
        ),
        "uwsgi": uwsgi,
        "nginx": nginx.removeprefix("nginx version: "),
        "inferserver": __version__,
    }
