"""The records that cross Redis, typed: the one package that knows their field names and encodings.

Every stream entry, hash and pub/sub message the services exchange is one of these classes;
split_infer/keys.py says under which key each lives. `to_fields()` gives what to write (redis-py
turns numbers into text, a float with repr, so a timestamp comes back exactly). `from_fields()`
takes what Redis returns (bytes) or what a test writes (str) and refuses anything malformed (a
missing field, a bad number, bad or too deeply nested JSON, bytes that are not UTF-8) with a
RecordError, never another exception (entries.py: the stream entries).

The two hashes that are rewritten in place, CameraStatus and AnalyticsCounts, are read field by
field instead: a field that is missing or unreadable is None (or left out), so one bad field, or
one that a newer service added, hides nothing else (hashes.py).
"""

from split_infer.records.encoding import Fields, FieldValue, RawFields, RecordError
from split_infer.records.entries import (
    AnalyticsEvent,
    DeadLetter,
    DetectedObject,
    DetectionResult,
    QueuedFrame,
    ShedRecord,
)
from split_infer.records.hashes import AnalyticsCounts, CameraStatus, MinuteTally, ZoneTally

__all__ = ["AnalyticsCounts", "AnalyticsEvent", "CameraStatus", "DeadLetter", "DetectedObject", "DetectionResult",
           "FieldValue", "Fields", "MinuteTally", "QueuedFrame", "RawFields", "RecordError", "ShedRecord", "ZoneTally"]
