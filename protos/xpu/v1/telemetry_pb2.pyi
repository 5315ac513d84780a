from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTH_OK: _ClassVar[Health]
    HEALTH_DEGRADED: _ClassVar[Health]
    HEALTH_FAILED: _ClassVar[Health]
    HEALTH_UNKNOWN: _ClassVar[Health]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_UTILIZATION: _ClassVar[Metric]
    METRIC_MEMORY_USED_BYTES: _ClassVar[Metric]
    METRIC_POWER_W: _ClassVar[Metric]
    METRIC_ENERGY_J: _ClassVar[Metric]
    METRIC_POWER_LIMIT_W: _ClassVar[Metric]
    METRIC_TEMPERATURE_C: _ClassVar[Metric]
    METRIC_MEMORY_TEMPERATURE_C: _ClassVar[Metric]
    METRIC_CORE_CLOCK_HZ: _ClassVar[Metric]
    METRIC_MEMORY_CLOCK_HZ: _ClassVar[Metric]
    METRIC_ECC_CORRECTED_TOTAL: _ClassVar[Metric]
    METRIC_ECC_UNCORRECTED_TOTAL: _ClassVar[Metric]
    METRIC_PCIE_RX_BYTES_PER_S: _ClassVar[Metric]
    METRIC_PCIE_TX_BYTES_PER_S: _ClassVar[Metric]
    METRIC_WORK_DONE: _ClassVar[Metric]
HEALTH_UNSPECIFIED: Health
HEALTH_OK: Health
HEALTH_DEGRADED: Health
HEALTH_FAILED: Health
HEALTH_UNKNOWN: Health
METRIC_UNSPECIFIED: Metric
METRIC_UTILIZATION: Metric
METRIC_MEMORY_USED_BYTES: Metric
METRIC_POWER_W: Metric
METRIC_ENERGY_J: Metric
METRIC_POWER_LIMIT_W: Metric
METRIC_TEMPERATURE_C: Metric
METRIC_MEMORY_TEMPERATURE_C: Metric
METRIC_CORE_CLOCK_HZ: Metric
METRIC_MEMORY_CLOCK_HZ: Metric
METRIC_ECC_CORRECTED_TOTAL: Metric
METRIC_ECC_UNCORRECTED_TOTAL: Metric
METRIC_PCIE_RX_BYTES_PER_S: Metric
METRIC_PCIE_TX_BYTES_PER_S: Metric
METRIC_WORK_DONE: Metric

class DeviceInfo(_message.Message):
    __slots__ = ("uuid", "index", "vendor", "model", "bus_id", "driver_version", "memory_total_bytes", "power_limit_min_w", "power_limit_max_w", "power_limit_default_w", "power_cap_settable", "temp_slowdown_c", "temp_shutdown_c", "simulated")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUS_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_MIN_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_MAX_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_DEFAULT_W_FIELD_NUMBER: _ClassVar[int]
    POWER_CAP_SETTABLE_FIELD_NUMBER: _ClassVar[int]
    TEMP_SLOWDOWN_C_FIELD_NUMBER: _ClassVar[int]
    TEMP_SHUTDOWN_C_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    vendor: str
    model: str
    bus_id: str
    driver_version: str
    memory_total_bytes: int
    power_limit_min_w: float
    power_limit_max_w: float
    power_limit_default_w: float
    power_cap_settable: bool
    temp_slowdown_c: float
    temp_shutdown_c: float
    simulated: bool
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., vendor: _Optional[str] = ..., model: _Optional[str] = ..., bus_id: _Optional[str] = ..., driver_version: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., power_limit_min_w: _Optional[float] = ..., power_limit_max_w: _Optional[float] = ..., power_limit_default_w: _Optional[float] = ..., power_cap_settable: _Optional[bool] = ..., temp_slowdown_c: _Optional[float] = ..., temp_shutdown_c: _Optional[float] = ..., simulated: _Optional[bool] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "boot_id", "agent_version", "devices", "labels", "interval_s", "acked_seq")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: str
    agent_version: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    labels: _containers.ScalarMap[str, str]
    interval_s: float
    acked_seq: int
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., interval_s: _Optional[float] = ..., acked_seq: _Optional[int] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("metric", "values", "present")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    metric: Metric
    values: _containers.RepeatedScalarFieldContainer[float]
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, metric: _Optional[_Union[Metric, str]] = ..., values: _Optional[_Iterable[float]] = ..., present: _Optional[_Iterable[bool]] = ...) -> None: ...

class ErrorEvent(_message.Message):
    __slots__ = ("row", "code", "text")
    ROW_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    row: int
    code: str
    text: str
    def __init__(self, row: _Optional[int] = ..., code: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("seq", "dropped_total", "device", "timestamp_ns", "health", "columns", "errors", "health_reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    dropped_total: int
    device: _containers.RepeatedScalarFieldContainer[int]
    timestamp_ns: _containers.RepeatedScalarFieldContainer[int]
    health: _containers.RepeatedScalarFieldContainer[Health]
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    errors: _containers.RepeatedCompositeFieldContainer[ErrorEvent]
    health_reason: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., dropped_total: _Optional[int] = ..., device: _Optional[_Iterable[int]] = ..., timestamp_ns: _Optional[_Iterable[int]] = ..., health: _Optional[_Iterable[_Union[Health, str]]] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[ErrorEvent, _Mapping]]] = ..., health_reason: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: Batch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("boot_id", "acked_seq", "batch_seq", "rejected_samples", "rejection")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    acked_seq: int
    batch_seq: int
    rejected_samples: int
    rejection: str
    def __init__(self, boot_id: _Optional[str] = ..., acked_seq: _Optional[int] = ..., batch_seq: _Optional[int] = ..., rejected_samples: _Optional[int] = ..., rejection: _Optional[str] = ...) -> None: ...

class Throttle(_message.Message):
    __slots__ = ("retry_after_ms",)
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    retry_after_ms: int
    def __init__(self, retry_after_ms: _Optional[int] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("ack", "throttle")
    ACK_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    throttle: Throttle
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., throttle: _Optional[_Union[Throttle, _Mapping]] = ...) -> None: ...
