from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ExportExamplesRequest(_message.Message):
    __slots__ = ("model", "after_seq", "batch_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    after_seq: int
    batch_size: int
    def __init__(self, model: _Optional[str] = ..., after_seq: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ExampleBatch(_message.Message):
    __slots__ = ("total", "seq", "id", "datatype", "shape", "items", "edge_label", "edge_confidence", "cloud_label", "cloud_confidence", "source", "segment", "version")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    EDGE_LABEL_FIELD_NUMBER: _ClassVar[int]
    EDGE_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLOUD_LABEL_FIELD_NUMBER: _ClassVar[int]
    CLOUD_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    total: int
    seq: _containers.RepeatedScalarFieldContainer[int]
    id: _containers.RepeatedScalarFieldContainer[str]
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    items: bytes
    edge_label: _containers.RepeatedScalarFieldContainer[int]
    edge_confidence: _containers.RepeatedScalarFieldContainer[float]
    cloud_label: _containers.RepeatedScalarFieldContainer[int]
    cloud_confidence: _containers.RepeatedScalarFieldContainer[float]
    source: _containers.RepeatedScalarFieldContainer[str]
    segment: _containers.RepeatedScalarFieldContainer[str]
    version: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, total: _Optional[int] = ..., seq: _Optional[_Iterable[int]] = ..., id: _Optional[_Iterable[str]] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., items: _Optional[bytes] = ..., edge_label: _Optional[_Iterable[int]] = ..., edge_confidence: _Optional[_Iterable[float]] = ..., cloud_label: _Optional[_Iterable[int]] = ..., cloud_confidence: _Optional[_Iterable[float]] = ..., source: _Optional[_Iterable[str]] = ..., segment: _Optional[_Iterable[str]] = ..., version: _Optional[_Iterable[str]] = ...) -> None: ...
