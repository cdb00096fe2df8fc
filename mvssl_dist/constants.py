"""The audio and embedding sizes every stage shares, in a module that imports nothing heavy.

Decode workers (ingest, embedding, views) import these without loading torch: a Ray worker that
imports torch spends about 2 CPU-seconds on it, which on a small machine is most of a job's start.
"""

SAMPLE_RATE = 16000
SEGMENT_SECONDS = 4.0
SEGMENT_SAMPLES = int(SAMPLE_RATE * SEGMENT_SECONDS)
EMBEDDING_DIM = 1024
# `mvssl embed` and `mvssl evaluate` leave longer audio files out (too_long): memory grows with length
EMBED_MAX_DURATION_S = 3600.0
