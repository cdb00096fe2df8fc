"""Planning an ingest over object storage: the inputs' sizes, asked one at a time vs. as the
ingest now gets them, side by side on a local S3-compatible server (moto, from the test extra).

    python benchmarks/planning.py [--keys 1000] [--latency-ms 20]

(a) one at a time, a new filesystem per request (the code before 2026-12-01: what `source_size`
did for every key named in a list file); (b) `input_sizes`: the bucket's filesystem built once,
32 requests in flight; (c) a bucket walk, whose listing already carries the sizes (no request per
key). A local server answers in about a millisecond, far faster than S3 in another building; the
`--latency-ms` delay, added to every request the server gets, stands in for that distance.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.fs as pafs  # noqa: E402

from mvssl_dist.shards import uris  # noqa: E402
from mvssl_dist.shards.ingest import input_sizes  # noqa: E402


def one_at_a_time(keys: list[str]) -> dict[str, int]:
    endpoint = os.environ["AWS_ENDPOINT_URL"].partition("://")[2]
    sizes = {}
    for key in keys:
        fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")  # as before: one per call
        sizes[key] = fs.get_file_info(key[len("s3://") :]).size
    return sizes


def start_server(latency_s: float):
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import WSGIRequestHandler

    handle = WSGIRequestHandler.handle_one_request

    def slowed(self):
        time.sleep(latency_s)
        return handle(self)

    WSGIRequestHandler.handle_one_request = slowed
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_REGION="us-east-1",
    )
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    server = start_server(args.latency_ms / 1000)
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket="music")
        keys = [f"s3://music/catalogue/Artist {i:05d} - Title.mp3" for i in range(args.keys)]
        for i, key in enumerate(keys):
            s3.put_object(Bucket="music", Key=key.split("/", 3)[3], Body=b"x" * (1000 + i))
        timings = {}
        start = time.perf_counter()
        before = one_at_a_time(keys)
        timings["a"] = time.perf_counter() - start
        uris.bucket_filesystem.cache_clear()
        start = time.perf_counter()
        now = input_sizes(keys, {})
        timings["b"] = time.perf_counter() - start
        start = time.perf_counter()
        walked = uris.find_sources(["s3://music/catalogue/"])
        timings["c"] = time.perf_counter() - start
        assert before == now == walked.sizes, "the three ways disagree on the sizes"
    finally:
        server.stop()
    print(f"{args.keys} keys, {args.latency_ms:g} ms added to each request")
    print(f"(a) one at a time, a filesystem per request : {timings['a']:7.2f} s")
    print(f"(b) input_sizes, 32 in flight               : {timings['b']:7.2f} s")
    print(f"(c) the sizes from a bucket walk            : {timings['c']:7.2f} s")
    print(f"ratio a/b: {timings['a'] / timings['b']:.1f}x   a/c: {timings['a'] / timings['c']:.1f}x")


if __name__ == "__main__":
    main()
