"""Catalogue ingest to WebDataset shards, and the readers every later stage uses."""

from mvssl_dist.shards.ingest import IngestError, IngestOptions, IngestSummary, ingest
from mvssl_dist.shards.reader import DatasetError, Track, load_index, read_tracks
from mvssl_dist.shards.uris import SourceError, Sources, find_sources, path_to_uri, uri_to_path

__all__ = [
    "DatasetError",
    "IngestError",
    "IngestOptions",
    "IngestSummary",
    "SourceError",
    "Sources",
    "Track",
    "find_sources",
    "ingest",
    "load_index",
    "path_to_uri",
    "read_tracks",
    "uri_to_path",
]
