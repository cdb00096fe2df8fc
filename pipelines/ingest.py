"""`ray job submit --working-dir . -- python pipelines/ingest.py SRC... --out DATASET_DIR [options]`.

Same options as `mvssl ingest`; inside a Ray job the driver joins the job's cluster (RAY_ADDRESS).
"""

import sys

from mvssl_dist.cli import pipeline_main


def main(argv: list[str] | None = None) -> int:
    return pipeline_main("ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
