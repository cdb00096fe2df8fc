"""`ray job submit --working-dir . -- python pipelines/embed.py SRC... --model models:/NAME@ALIAS --out OUT_DIR`.

Same options as `mvssl embed`; inside a Ray job the driver joins the job's cluster (RAY_ADDRESS).
"""

import sys

from mvssl_dist.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["embed", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
