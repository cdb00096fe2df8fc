"""A local S3-compatible server (moto) on 127.0.0.1, reached over real HTTP (Ray workers, an MLflow server)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def local_s3(*buckets: str) -> Iterator[str]:
    """The server's endpoint URL, with ``buckets`` made; stopped on leaving."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        keys = {k.lower(): v for k, v in CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"], **keys)
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
        # Close the stored objects' buffers now: left to interpreter exit, moto's FakeKey.__del__
        # imports `warnings` and prints "ImportError: sys.meta_path is None" (seen on Python 3.10).
        from moto.s3.models import s3_backends

        s3_backends.reset()
