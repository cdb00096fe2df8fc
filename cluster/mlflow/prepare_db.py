"""Create or upgrade the tracking server's tables once, before `mlflow server` starts.

entrypoint.sh runs it. On PostgreSQL it takes an advisory lock, then does what the server does
at start-up: the tracking and registry tables, then the basic-auth tables. Replicas starting
together (the Kubernetes Deployment runs two) so wait for each other instead of racing: two
replicas on a fresh database once left one dead at start-up with UniqueViolation on
"experiments". When the server then starts, its tables are already at their head revision.
Other backends (SQLite for a single server): nothing to do.
"""

import os
import time

from sqlalchemy.engine import make_url

LOCK_ID = 7305817  # any fixed number, the same in every replica


def main() -> None:
    uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
    url = make_url(uri)
    if url.get_backend_name() != "postgresql":
        return
    import psycopg
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
    from mlflow.server.handlers import initialize_backend_stores
    from mlflow.utils.server_cli_utils import resolve_default_artifact_root

    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with connect(psycopg, libpq) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))  # released with the connection
        initialize_backend_stores(uri, uri, resolve_default_artifact_root(True, None, uri))
        AuthStore().init_db(os.environ.get("MLFLOW_AUTH_DATABASE_URI") or uri)


def connect(psycopg, libpq: str, wait_s: float = 120.0):
    """PostgreSQL may still be starting beside us (Kubernetes starts both at once): retry for a
    while, as the server's own store does, rather than exit and wait for a restart back-off."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return psycopg.connect(libpq, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


if __name__ == "__main__":
    main()
