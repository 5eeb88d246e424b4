# The server's own image: gunicorn with deploy/gunicorn.conf.py, talking to the host's Docker engine through its
# socket. Model containers are siblings on that engine; inputs and outputs move through the engine's archive API,
# so this container shares no path with them.
#
# Online:   docker build -t inferserver .                     (pip installs from PyPI)
# Offline:  scripts/build-image.sh                            (base from Debian packages, wheels built on the host)
# Run:      docker run -d -p 8000:8000 -v /var/run/docker.sock:/var/run/docker.sock \
#               --group-add $(stat -c %g /var/run/docker.sock) \
#               -v /etc/inferserver/models:/etc/inferserver/models:ro -v inferserver-sessions:/var/inferserver inferserver
# Open files: the server raises its soft RLIMIT_NOFILE to the hard limit at start (a log stream holds two file
# descriptors); an image cannot set the limit itself, so where the engine's default is low add
# `--ulimit nofile=65536:65536` to `docker run`.
ARG BASE=python:3.12-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/inferserver \
    PATH=/opt/inferserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# build/wheels (scripts/build-image.sh: `pip wheel .` on the host) makes the install offline; when it is absent
# pip takes everything from PyPI. README.md is only there so the wildcard may match nothing.
COPY README.md build/wheel[s] /tmp/wheels/
COPY pyproject.toml README.md /tmp/src/
COPY src /tmp/src/src
RUN python3 -m venv "$VIRTUAL_ENV" \
    && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
           pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /tmp/wheels 'inferserver[deploy,convert]'; \
       else \
           pip install --no-cache-dir --disable-pip-version-check '/tmp/src[deploy,convert]'; \
       fi \
    && rm -rf /tmp/wheels /tmp/src

# A fixed uid, so a host directory mounted at /var/inferserver can be chowned to it. The Docker socket's group
# differs between hosts: give it at run time with --group-add.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent inferserver \
    && mkdir -p /etc/inferserver/models /var/inferserver \
    && chown inferserver:inferserver /var/inferserver
COPY deploy/gunicorn.conf.py /etc/inferserver/gunicorn.conf.py

ENV INFERSERVER_BIND=0.0.0.0:8000 \
    INFERSERVER_MODEL_PATH=/etc/inferserver/models \
    INFERSERVER_SESSION_PATH=/var/inferserver
VOLUME ["/etc/inferserver/models", "/var/inferserver"]
USER inferserver
WORKDIR /var/inferserver
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gunicorn", "-c", "/etc/inferserver/gunicorn.conf.py", "inferserver.app:app"]
