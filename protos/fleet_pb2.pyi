from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersions(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeLoad(_message.Message):
    __slots__ = ("queue_depth", "in_flight", "ewma_latency_ms", "capacity")
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    EWMA_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    queue_depth: int
    in_flight: int
    ewma_latency_ms: float
    capacity: int
    def __init__(self, queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., ewma_latency_ms: _Optional[float] = ..., capacity: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_id", "address", "models", "capacity", "software_version", "processes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    capacity: int
    software_version: str
    processes: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ..., capacity: _Optional[int] = ..., software_version: _Optional[str] = ..., processes: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("epoch", "heartbeat_interval_s")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    heartbeat_interval_s: float
    def __init__(self, epoch: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "epoch", "load", "models", "drift_references", "drift_windows")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    DRIFT_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    epoch: int
    load: NodeLoad
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    drift_references: _containers.RepeatedCompositeFieldContainer[DriftReference]
    drift_windows: _containers.RepeatedCompositeFieldContainer[DriftWindow]
    def __init__(self, node_id: _Optional[str] = ..., epoch: _Optional[int] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ..., drift_references: _Optional[_Iterable[_Union[DriftReference, _Mapping]]] = ..., drift_windows: _Optional[_Iterable[_Union[DriftWindow, _Mapping]]] = ...) -> None: ...

class DriftStats(_message.Message):
    __slots__ = ("items", "count", "total", "total_sq", "input_lo", "input_hi", "input_histogram", "confidence_lo", "confidence_hi", "confidence_histogram")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SQ_FIELD_NUMBER: _ClassVar[int]
    INPUT_LO_FIELD_NUMBER: _ClassVar[int]
    INPUT_HI_FIELD_NUMBER: _ClassVar[int]
    INPUT_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_LO_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_HI_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    items: int
    count: _containers.RepeatedScalarFieldContainer[int]
    total: _containers.RepeatedScalarFieldContainer[float]
    total_sq: _containers.RepeatedScalarFieldContainer[float]
    input_lo: float
    input_hi: float
    input_histogram: _containers.RepeatedScalarFieldContainer[int]
    confidence_lo: float
    confidence_hi: float
    confidence_histogram: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, items: _Optional[int] = ..., count: _Optional[_Iterable[int]] = ..., total: _Optional[_Iterable[float]] = ..., total_sq: _Optional[_Iterable[float]] = ..., input_lo: _Optional[float] = ..., input_hi: _Optional[float] = ..., input_histogram: _Optional[_Iterable[int]] = ..., confidence_lo: _Optional[float] = ..., confidence_hi: _Optional[float] = ..., confidence_histogram: _Optional[_Iterable[int]] = ...) -> None: ...

class DriftReference(_message.Message):
    __slots__ = ("model", "version", "reference")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    reference: DriftStats
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., reference: _Optional[_Union[DriftStats, _Mapping]] = ...) -> None: ...

class DriftWindow(_message.Message):
    __slots__ = ("model", "version", "segment", "window")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    segment: str
    window: DriftStats
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., segment: _Optional[str] = ..., window: _Optional[_Union[DriftStats, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("reregister", "draining")
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    reregister: bool
    draining: bool
    def __init__(self, reregister: _Optional[bool] = ..., draining: _Optional[bool] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "state", "source", "models", "load", "weight", "last_seen_s_ago", "epoch", "shards_done", "items_done", "outstanding", "processes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_S_AGO_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_DONE_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    state: str
    source: str
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    load: NodeLoad
    weight: float
    last_seen_s_ago: float
    epoch: int
    shards_done: int
    items_done: int
    outstanding: int
    processes: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., source: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ..., weight: _Optional[float] = ..., last_seen_s_ago: _Optional[float] = ..., epoch: _Optional[int] = ..., shards_done: _Optional[int] = ..., items_done: _Optional[int] = ..., outstanding: _Optional[int] = ..., processes: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "cloud", "store_fault")
    NODES_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    STORE_FAULT_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    cloud: CloudTierInfo
    store_fault: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., cloud: _Optional[_Union[CloudTierInfo, _Mapping]] = ..., store_fault: _Optional[str] = ...) -> None: ...

class CloudTierInfo(_message.Message):
    __slots__ = ("address", "state", "last_error", "spooled_items")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SPOOLED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    address: str
    state: str
    last_error: str
    spooled_items: int
    def __init__(self, address: _Optional[str] = ..., state: _Optional[str] = ..., last_error: _Optional[str] = ..., spooled_items: _Optional[int] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class JobHeader(_message.Message):
    __slots__ = ("job_id", "model", "model_version", "shard_size", "total_items", "params", "outputs")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    model_version: str
    shard_size: int
    total_items: int
    params: _containers.ScalarMap[str, str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., shard_size: _Optional[int] = ..., total_items: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class ItemBatch(_message.Message):
    __slots__ = ("ids", "datatype", "shape", "data")
    IDS_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("header", "items")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    header: JobHeader
    items: ItemBatch
    def __init__(self, header: _Optional[_Union[JobHeader, _Mapping]] = ..., items: _Optional[_Union[ItemBatch, _Mapping]] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "interval_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    interval_s: float
    def __init__(self, job_id: _Optional[str] = ..., interval_s: _Optional[float] = ...) -> None: ...

class NodeShare(_message.Message):
    __slots__ = ("node", "items")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    node: str
    items: int
    def __init__(self, node: _Optional[str] = ..., items: _Optional[int] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "model", "state", "total_items", "done_items", "shards_total", "shards_done", "shards_leased", "created_at", "finished_at", "error", "shares", "requeued_shards", "duplicates_discarded", "pending_escalations", "cloud_answered", "degraded")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DONE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_LEASED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_DISCARDED_FIELD_NUMBER: _ClassVar[int]
    PENDING_ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    state: str
    total_items: int
    done_items: int
    shards_total: int
    shards_done: int
    shards_leased: int
    created_at: float
    finished_at: float
    error: str
    shares: _containers.RepeatedCompositeFieldContainer[NodeShare]
    requeued_shards: int
    duplicates_discarded: int
    pending_escalations: int
    cloud_answered: int
    degraded: int
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[str] = ..., total_items: _Optional[int] = ..., done_items: _Optional[int] = ..., shards_total: _Optional[int] = ..., shards_done: _Optional[int] = ..., shards_leased: _Optional[int] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., error: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[NodeShare, _Mapping]]] = ..., requeued_shards: _Optional[int] = ..., duplicates_discarded: _Optional[int] = ..., pending_escalations: _Optional[int] = ..., cloud_answered: _Optional[int] = ..., degraded: _Optional[int] = ...) -> None: ...

class FetchResultsRequest(_message.Message):
    __slots__ = ("job_id", "after_seq", "follow", "include_pending")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PENDING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    follow: bool
    include_pending: bool
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., follow: _Optional[bool] = ..., include_pending: _Optional[bool] = ...) -> None: ...

class ResultTensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "raw")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., raw: _Optional[bytes] = ...) -> None: ...

class ResultRecord(_message.Message):
    __slots__ = ("seq", "id", "label", "confidence", "tier", "node", "model_version", "extra_json", "provisional", "outputs")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    id: str
    label: int
    confidence: float
    tier: str
    node: str
    model_version: str
    extra_json: str
    provisional: bool
    outputs: _containers.RepeatedCompositeFieldContainer[ResultTensor]
    def __init__(self, seq: _Optional[int] = ..., id: _Optional[str] = ..., label: _Optional[int] = ..., confidence: _Optional[float] = ..., tier: _Optional[str] = ..., node: _Optional[str] = ..., model_version: _Optional[str] = ..., extra_json: _Optional[str] = ..., provisional: _Optional[bool] = ..., outputs: _Optional[_Iterable[_Union[ResultTensor, _Mapping]]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RolloutRef(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RolloutMargins(_message.Message):
    __slots__ = ("min_requests", "error_rate", "latency_p95_ratio", "confidence_ks", "escalation_rate", "min_agreement", "min_shadowed", "promote_after")
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_RATIO_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_KS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_SHADOWED_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_AFTER_FIELD_NUMBER: _ClassVar[int]
    min_requests: int
    error_rate: float
    latency_p95_ratio: float
    confidence_ks: float
    escalation_rate: float
    min_agreement: float
    min_shadowed: int
    promote_after: int
    def __init__(self, min_requests: _Optional[int] = ..., error_rate: _Optional[float] = ..., latency_p95_ratio: _Optional[float] = ..., confidence_ks: _Optional[float] = ..., escalation_rate: _Optional[float] = ..., min_agreement: _Optional[float] = ..., min_shadowed: _Optional[int] = ..., promote_after: _Optional[int] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "canary", "stable", "share", "shadow", "margins")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    MARGINS_FIELD_NUMBER: _ClassVar[int]
    model: str
    canary: str
    stable: str
    share: float
    shadow: float
    margins: RolloutMargins
    def __init__(self, model: _Optional[str] = ..., canary: _Optional[str] = ..., stable: _Optional[str] = ..., share: _Optional[float] = ..., shadow: _Optional[float] = ..., margins: _Optional[_Union[RolloutMargins, _Mapping]] = ...) -> None: ...

class RolloutInfo(_message.Message):
    __slots__ = ("model", "stable", "canary", "share", "shadow", "state", "reason", "started_at", "decided_at", "margins", "verdict", "reasons", "stats")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    MARGINS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    model: str
    stable: str
    canary: str
    share: float
    shadow: float
    state: str
    reason: str
    started_at: float
    decided_at: float
    margins: RolloutMargins
    verdict: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    stats: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., stable: _Optional[str] = ..., canary: _Optional[str] = ..., share: _Optional[float] = ..., shadow: _Optional[float] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., started_at: _Optional[float] = ..., decided_at: _Optional[float] = ..., margins: _Optional[_Union[RolloutMargins, _Mapping]] = ..., verdict: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., stats: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RolloutList(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutInfo]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[RolloutInfo, _Mapping]]] = ...) -> None: ...
