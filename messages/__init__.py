"""Typed messages of the conveyor pipeline and their msgpack codec."""

from messages.codec import MESSAGE_TYPES, CodecError, decode, encode
from messages.types import (
    Cancel,
    Demand,
    DownloadComplete,
    DownloadFailed,
    DownloadStarted,
    Enqueue,
    Grant,
    Outcome,
    PostProcessed,
    PostProcessFailed,
    ProcessingComplete,
    ProcessingFailed,
    ProgressUpdate,
    Rejected,
    RunFinished,
    WorkItem,
)

__all__ = [
    "MESSAGE_TYPES",
    "Cancel",
    "CodecError",
    "Demand",
    "DownloadComplete",
    "DownloadFailed",
    "DownloadStarted",
    "Enqueue",
    "Grant",
    "Outcome",
    "PostProcessFailed",
    "PostProcessed",
    "ProcessingComplete",
    "ProcessingFailed",
    "ProgressUpdate",
    "Rejected",
    "RunFinished",
    "WorkItem",
    "decode",
    "encode",
]
