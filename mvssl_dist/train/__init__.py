"""Training: schedules now; the Ray Train loop joins with the pre-training issue."""
