"""`ray job submit --working-dir . -- python pipelines/ingest.py SRC... --out DATASET_DIR [options]`.

Same options as `mvssl ingest`; inside a Ray job the driver joins the job's cluster.
"""

import sys

from mvssl_dist.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["ingest", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
