"""`ray job submit --working-dir . -- python pipelines/embed.py SRC... --model models:/NAME@ALIAS --out OUT_DIR`.

Same options as `mvssl embed`; inside a Ray job the driver joins the job's cluster (RAY_ADDRESS).
"""

import sys

from mvssl_dist.cli import pipeline_main


def main(argv: list[str] | None = None) -> int:
    return pipeline_main("embed", argv)


if __name__ == "__main__":
    sys.exit(main())
