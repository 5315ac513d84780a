from xpuctl.protos.xpu.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATUS_UNSPECIFIED: _ClassVar[NodeStatus]
    NODE_STATUS_ONLINE: _ClassVar[NodeStatus]
    NODE_STATUS_STALE: _ClassVar[NodeStatus]
    NODE_STATUS_OFFLINE: _ClassVar[NodeStatus]
NODE_STATUS_UNSPECIFIED: NodeStatus
NODE_STATUS_ONLINE: NodeStatus
NODE_STATUS_STALE: NodeStatus
NODE_STATUS_OFFLINE: NodeStatus

class GetSummaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IngestStats(_message.Message):
    __slots__ = ("batches_total", "samples_total", "duplicate_batches_total", "gap_batches_total", "rejected_by_reason", "ingest_p50_ms", "ingest_p99_ms", "streams_open")
    class RejectedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BATCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GAP_BATCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    INGEST_P50_MS_FIELD_NUMBER: _ClassVar[int]
    INGEST_P99_MS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_OPEN_FIELD_NUMBER: _ClassVar[int]
    batches_total: int
    samples_total: int
    duplicate_batches_total: int
    gap_batches_total: int
    rejected_by_reason: _containers.ScalarMap[str, int]
    ingest_p50_ms: float
    ingest_p99_ms: float
    streams_open: int
    def __init__(self, batches_total: _Optional[int] = ..., samples_total: _Optional[int] = ..., duplicate_batches_total: _Optional[int] = ..., gap_batches_total: _Optional[int] = ..., rejected_by_reason: _Optional[_Mapping[str, int]] = ..., ingest_p50_ms: _Optional[float] = ..., ingest_p99_ms: _Optional[float] = ..., streams_open: _Optional[int] = ...) -> None: ...

class HistoryStats(_message.Message):
    __slots__ = ("url", "exported", "dropped", "failed", "last_error")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    url: str
    exported: int
    dropped: int
    failed: int
    last_error: str
    def __init__(self, url: _Optional[str] = ..., exported: _Optional[int] = ..., dropped: _Optional[int] = ..., failed: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("nodes", "nodes_online", "nodes_stale", "nodes_offline", "devices", "devices_by_vendor", "devices_by_health", "power_w", "budget_w", "anomalies_open", "ingest", "history")
    class DevicesByVendorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DevicesByHealthEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODES_FIELD_NUMBER: _ClassVar[int]
    NODES_ONLINE_FIELD_NUMBER: _ClassVar[int]
    NODES_STALE_FIELD_NUMBER: _ClassVar[int]
    NODES_OFFLINE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_BY_VENDOR_FIELD_NUMBER: _ClassVar[int]
    DEVICES_BY_HEALTH_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    BUDGET_W_FIELD_NUMBER: _ClassVar[int]
    ANOMALIES_OPEN_FIELD_NUMBER: _ClassVar[int]
    INGEST_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    nodes: int
    nodes_online: int
    nodes_stale: int
    nodes_offline: int
    devices: int
    devices_by_vendor: _containers.ScalarMap[str, int]
    devices_by_health: _containers.ScalarMap[str, int]
    power_w: float
    budget_w: float
    anomalies_open: int
    ingest: IngestStats
    history: HistoryStats
    def __init__(self, nodes: _Optional[int] = ..., nodes_online: _Optional[int] = ..., nodes_stale: _Optional[int] = ..., nodes_offline: _Optional[int] = ..., devices: _Optional[int] = ..., devices_by_vendor: _Optional[_Mapping[str, int]] = ..., devices_by_health: _Optional[_Mapping[str, int]] = ..., power_w: _Optional[float] = ..., budget_w: _Optional[float] = ..., anomalies_open: _Optional[int] = ..., ingest: _Optional[_Union[IngestStats, _Mapping]] = ..., history: _Optional[_Union[HistoryStats, _Mapping]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "boot_id", "status", "agent_version", "labels", "devices", "power_w", "last_seen_ns", "first_seq", "acked_seq", "batches_stored", "duplicate_batches", "gap_batches", "dropped_total", "connected", "weight")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCHES_STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    GAP_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: str
    status: NodeStatus
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    devices: int
    power_w: float
    last_seen_ns: int
    first_seq: int
    acked_seq: int
    batches_stored: int
    duplicate_batches: int
    gap_batches: int
    dropped_total: int
    connected: bool
    weight: float
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., status: _Optional[_Union[NodeStatus, str]] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., devices: _Optional[int] = ..., power_w: _Optional[float] = ..., last_seen_ns: _Optional[int] = ..., first_seq: _Optional[int] = ..., acked_seq: _Optional[int] = ..., batches_stored: _Optional[int] = ..., duplicate_batches: _Optional[int] = ..., gap_batches: _Optional[int] = ..., dropped_total: _Optional[int] = ..., connected: _Optional[bool] = ..., weight: _Optional[float] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("node_id", "info", "health", "health_reason", "timestamp_ns", "utilization", "memory_used_bytes", "power_w", "energy_j", "power_limit_w", "temperature_c", "memory_temperature_c", "core_clock_hz", "memory_clock_hz", "ecc_corrected_total", "ecc_uncorrected_total", "pcie_rx_bytes_per_s", "pcie_tx_bytes_per_s", "cordoned", "headroom_cap_w", "headroom_ceiling_w", "node_status", "cordon_reason", "anomalies", "weight", "job_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    CORE_CLOCK_HZ_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CLOCK_HZ_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PCIE_RX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PCIE_TX_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_CAP_W_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_CEILING_W_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    CORDON_REASON_FIELD_NUMBER: _ClassVar[int]
    ANOMALIES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    info: _telemetry_pb2.DeviceInfo
    health: _telemetry_pb2.Health
    health_reason: str
    timestamp_ns: int
    utilization: float
    memory_used_bytes: float
    power_w: float
    energy_j: float
    power_limit_w: float
    temperature_c: float
    memory_temperature_c: float
    core_clock_hz: float
    memory_clock_hz: float
    ecc_corrected_total: float
    ecc_uncorrected_total: float
    pcie_rx_bytes_per_s: float
    pcie_tx_bytes_per_s: float
    cordoned: bool
    headroom_cap_w: float
    headroom_ceiling_w: float
    node_status: NodeStatus
    cordon_reason: str
    anomalies: _containers.RepeatedScalarFieldContainer[str]
    weight: float
    job_id: str
    def __init__(self, node_id: _Optional[str] = ..., info: _Optional[_Union[_telemetry_pb2.DeviceInfo, _Mapping]] = ..., health: _Optional[_Union[_telemetry_pb2.Health, str]] = ..., health_reason: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., utilization: _Optional[float] = ..., memory_used_bytes: _Optional[float] = ..., power_w: _Optional[float] = ..., energy_j: _Optional[float] = ..., power_limit_w: _Optional[float] = ..., temperature_c: _Optional[float] = ..., memory_temperature_c: _Optional[float] = ..., core_clock_hz: _Optional[float] = ..., memory_clock_hz: _Optional[float] = ..., ecc_corrected_total: _Optional[float] = ..., ecc_uncorrected_total: _Optional[float] = ..., pcie_rx_bytes_per_s: _Optional[float] = ..., pcie_tx_bytes_per_s: _Optional[float] = ..., cordoned: _Optional[bool] = ..., headroom_cap_w: _Optional[float] = ..., headroom_ceiling_w: _Optional[float] = ..., node_status: _Optional[_Union[NodeStatus, str]] = ..., cordon_reason: _Optional[str] = ..., anomalies: _Optional[_Iterable[str]] = ..., weight: _Optional[float] = ..., job_id: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("node_id", "vendor", "health", "cordoned", "min_headroom_w", "page_size", "page_token")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    MIN_HEADROOM_W_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    vendor: str
    health: _telemetry_pb2.Health
    cordoned: bool
    min_headroom_w: float
    page_size: int
    page_token: str
    def __init__(self, node_id: _Optional[str] = ..., vendor: _Optional[str] = ..., health: _Optional[_Union[_telemetry_pb2.Health, str]] = ..., cordoned: _Optional[bool] = ..., min_headroom_w: _Optional[float] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "next_page_token")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    next_page_token: str
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("uuid", "metric", "limit")
    UUID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    metric: _telemetry_pb2.Metric
    limit: int
    def __init__(self, uuid: _Optional[str] = ..., metric: _Optional[_Union[_telemetry_pb2.Metric, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("timestamp_ns", "value")
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    value: float
    def __init__(self, timestamp_ns: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class GetDeviceResponse(_message.Message):
    __slots__ = ("device", "history")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    device: Device
    history: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("timestamp_ns", "kind", "node_id", "device_uuid", "severity", "message", "value", "threshold", "detector", "action_id", "shard", "id")
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    kind: str
    node_id: str
    device_uuid: str
    severity: str
    message: str
    value: float
    threshold: float
    detector: str
    action_id: str
    shard: str
    id: int
    def __init__(self, timestamp_ns: _Optional[int] = ..., kind: _Optional[str] = ..., node_id: _Optional[str] = ..., device_uuid: _Optional[str] = ..., severity: _Optional[str] = ..., message: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., detector: _Optional[str] = ..., action_id: _Optional[str] = ..., shard: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("kinds", "node_id", "since_ns", "device_uuid", "history_only", "after_id")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ONLY_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    node_id: str
    since_ns: int
    device_uuid: str
    history_only: bool
    after_id: int
    def __init__(self, kinds: _Optional[_Iterable[str]] = ..., node_id: _Optional[str] = ..., since_ns: _Optional[int] = ..., device_uuid: _Optional[str] = ..., history_only: _Optional[bool] = ..., after_id: _Optional[int] = ...) -> None: ...

class PowerBudget(_message.Message):
    __slots__ = ("budget_w", "power_w", "feasible")
    BUDGET_W_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    budget_w: float
    power_w: float
    feasible: bool
    def __init__(self, budget_w: _Optional[float] = ..., power_w: _Optional[float] = ..., feasible: _Optional[bool] = ...) -> None: ...

class GetPowerBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetPowerBudgetRequest(_message.Message):
    __slots__ = ("budget_w",)
    BUDGET_W_FIELD_NUMBER: _ClassVar[int]
    budget_w: float
    def __init__(self, budget_w: _Optional[float] = ...) -> None: ...

class SetPriorityRequest(_message.Message):
    __slots__ = ("device_uuid", "node_id", "weight")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    node_id: str
    weight: float
    def __init__(self, device_uuid: _Optional[str] = ..., node_id: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class SetPriorityResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CordonRequest(_message.Message):
    __slots__ = ("device_uuid", "node_id", "reason")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    node_id: str
    reason: str
    def __init__(self, device_uuid: _Optional[str] = ..., node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CordonResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: int
    def __init__(self, devices: _Optional[int] = ...) -> None: ...

class ReleaseDeviceRequest(_message.Message):
    __slots__ = ("device_uuid", "reason")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    reason: str
    def __init__(self, device_uuid: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseDeviceResponse(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class JobDevice(_message.Message):
    __slots__ = ("uuid", "node_id", "index", "start_ns", "end_ns", "energy_j", "method")
    UUID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    node_id: str
    index: int
    start_ns: int
    end_ns: int
    energy_j: float
    method: str
    def __init__(self, uuid: _Optional[str] = ..., node_id: _Optional[str] = ..., index: _Optional[int] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., energy_j: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "user", "started_ns", "ended_ns", "devices", "energy_j", "duration_s", "mean_power_w", "method")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    ENDED_NS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_POWER_W_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    user: str
    started_ns: int
    ended_ns: int
    devices: _containers.RepeatedCompositeFieldContainer[JobDevice]
    energy_j: float
    duration_s: float
    mean_power_w: float
    method: str
    def __init__(self, job_id: _Optional[str] = ..., user: _Optional[str] = ..., started_ns: _Optional[int] = ..., ended_ns: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[JobDevice, _Mapping]]] = ..., energy_j: _Optional[float] = ..., duration_s: _Optional[float] = ..., mean_power_w: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class StartJobRequest(_message.Message):
    __slots__ = ("job_id", "node_id", "indices", "user")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    user: str
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., user: _Optional[str] = ...) -> None: ...

class StartJobResponse(_message.Message):
    __slots__ = ("job", "unfit")
    JOB_FIELD_NUMBER: _ClassVar[int]
    UNFIT_FIELD_NUMBER: _ClassVar[int]
    job: Job
    unfit: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., unfit: _Optional[_Iterable[str]] = ...) -> None: ...

class EndJobRequest(_message.Message):
    __slots__ = ("job_id", "node_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("job_id", "running_only")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_ONLY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    running_only: bool
    def __init__(self, job_id: _Optional[str] = ..., running_only: _Optional[bool] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...
