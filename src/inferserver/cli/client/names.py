"""The client's environment variables and default server, apart from httpx so `--help` needs no extra."""

DEFAULT_URL = "http://localhost:8000"  # `inferserver serve`'s default port
URL_ENV = "INFERSERVER_URL"
USER_ENV, PASSWORD_ENV, TOKEN_ENV = "INFERSERVER_USER", "INFERSERVER_PASSWORD", "INFERSERVER_TOKEN"
NETRC_ENV = "NETRC"  # as curl and requests: another netrc file than ~/.netrc
INSTALL_HINT = "pip install 'inferserver[client]'"
