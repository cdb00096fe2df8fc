"""`ray job submit --working-dir . -- python pipelines/pretrain.py --config configs/contrastive.yaml data.path=...`.

Same arguments as `mvssl pretrain`; inside a Ray job the driver joins the job's cluster (RAY_ADDRESS).
"""

import sys

from mvssl_dist.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["pretrain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
