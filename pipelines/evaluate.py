"""`ray job submit --working-dir . -- python pipelines/evaluate.py --model models:/NAME@ALIAS --task mtat --split-dir SPLITS --audio-root AUDIO`.

Same options as `mvssl evaluate`; inside a Ray job the driver joins the job's cluster (RAY_ADDRESS).
"""

import sys

from mvssl_dist.cli import pipeline_main


def main(argv: list[str] | None = None) -> int:
    return pipeline_main("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
