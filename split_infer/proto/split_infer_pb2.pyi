from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureFrame(_message.Message):
    __slots__ = ("camera_id", "seq", "capture_ts", "sent_ts", "payload", "width", "height", "snapshot_jpeg", "timings_ms", "dropped_before", "session")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TS_FIELD_NUMBER: _ClassVar[int]
    SENT_TS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_JPEG_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    seq: int
    capture_ts: float
    sent_ts: float
    payload: bytes
    width: int
    height: int
    snapshot_jpeg: bytes
    timings_ms: _containers.ScalarMap[str, float]
    dropped_before: int
    session: str
    def __init__(self, camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., capture_ts: _Optional[float] = ..., sent_ts: _Optional[float] = ..., payload: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., snapshot_jpeg: _Optional[bytes] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., dropped_before: _Optional[int] = ..., session: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("camera_id", "seq", "status", "error", "credit", "key_frame_needed")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[Ack.Status]
        REJECTED: _ClassVar[Ack.Status]
        RETRY: _ClassVar[Ack.Status]
    OK: Ack.Status
    REJECTED: Ack.Status
    RETRY: Ack.Status
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    KEY_FRAME_NEEDED_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    seq: int
    status: Ack.Status
    error: str
    credit: int
    key_frame_needed: bool
    def __init__(self, camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., status: _Optional[_Union[Ack.Status, str]] = ..., error: _Optional[str] = ..., credit: _Optional[int] = ..., key_frame_needed: _Optional[bool] = ...) -> None: ...
