"""`ray job submit --working-dir . -- python pipelines/pretrain.py --config configs/contrastive.yaml data.path=...`.

Same arguments as `mvssl pretrain`; inside a Ray job the driver joins the job's cluster (RAY_ADDRESS).
"""

import sys

from mvssl_dist.cli import pipeline_main


def main(argv: list[str] | None = None) -> int:
    return pipeline_main("pretrain", argv)


if __name__ == "__main__":
    sys.exit(main())
