"""Keep Ray Data's scheduling loop from spinning while a dataset waits on its consumer.

The loop blocks in ``ray.wait`` until a running task has output. A views dataset feeding a
training step is mostly backpressured: its tasks hold finished blocks that the loop may not
take yet, so ``ray.wait`` returns at once, pass after pass, and the loop busies about half a
core (in the ``SplitCoordinator`` actor under Ray Train, in the driver otherwise). On 2 cores
that was a quarter of the machine during pre-training. :class:`IdleBackoff` sleeps briefly
after a pass in which nothing moved (Ray Data's own no-progress notion: outputs taken, blocks
queued, plus tasks running); any change is then seen at most ``IDLE_SLEEP_S`` late.
It reads Ray Data internals: if a Ray upgrade changes them it does nothing, and
``MVSSL_IDLE_BACKOFF=0`` switches it off.
"""

from __future__ import annotations

import os
import time

from ray.data._internal.execution.execution_callback import ExecutionCallback

IDLE_SLEEP_S = 0.01


class IdleBackoff(ExecutionCallback):
    def __init__(self) -> None:
        self.last = None

    def on_execution_step(self, executor) -> None:
        try:
            now = [
                (
                    op.metrics.num_outputs_taken,
                    state.total_enqueued_input_blocks(),
                    state.total_enqueued_output_blocks(),
                    op.num_active_tasks(),
                )
                for op, state in executor._topology.items()
            ]
        except Exception:  # another Ray's internals: no back-off rather than a failed job
            return
        if now == self.last:
            time.sleep(IDLE_SLEEP_S)
        self.last = now


def with_idle_backoff(ds):
    """``ds`` with :class:`IdleBackoff` in its execution callbacks (its own context only)."""
    if os.environ.get("MVSSL_IDLE_BACKOFF", "1") == "0":
        return ds
    context = ds.context
    if IdleBackoff not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes = [*context.custom_execution_callback_classes, IdleBackoff]
    return ds
