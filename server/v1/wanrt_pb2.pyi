# ruff: noqa
# Generated from proto/wanrt/v1/wanrt.proto by `python -m wanrt.server.codegen`; do not edit.
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VideoFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIDEO_FORMAT_UNSPECIFIED: _ClassVar[VideoFormat]
    VIDEO_FORMAT_MP4: _ClassVar[VideoFormat]
    VIDEO_FORMAT_RAW_RGB24: _ClassVar[VideoFormat]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_TEXT: _ClassVar[Stage]
    STAGE_DENOISE: _ClassVar[Stage]
    STAGE_DECODE: _ClassVar[Stage]
VIDEO_FORMAT_UNSPECIFIED: VideoFormat
VIDEO_FORMAT_MP4: VideoFormat
VIDEO_FORMAT_RAW_RGB24: VideoFormat
STAGE_UNSPECIFIED: Stage
STAGE_TEXT: Stage
STAGE_DENOISE: Stage
STAGE_DECODE: Stage

class Latents(_message.Message):
    __slots__ = ("shape", "float32_data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FLOAT32_DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    float32_data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., float32_data: _Optional[bytes] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "frames", "height", "width", "steps", "guidance", "guidance_2", "seed", "fps", "latents", "format", "client_request_id", "schedule", "shift", "step_cache")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_2_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    STEP_CACHE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    guidance_2: float
    seed: int
    fps: int
    latents: Latents
    format: VideoFormat
    client_request_id: str
    schedule: str
    shift: float
    step_cache: float
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., frames: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., guidance_2: _Optional[float] = ..., seed: _Optional[int] = ..., fps: _Optional[int] = ..., latents: _Optional[_Union[Latents, _Mapping]] = ..., format: _Optional[_Union[VideoFormat, str]] = ..., client_request_id: _Optional[str] = ..., schedule: _Optional[str] = ..., shift: _Optional[float] = ..., step_cache: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("accepted", "progress", "video", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    progress: Progress
    video: VideoChunk
    result: Result
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., video: _Optional[_Union[VideoChunk, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("job_id", "queue_position")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    queue_position: int
    def __init__(self, job_id: _Optional[str] = ..., queue_position: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "step", "total", "elapsed_s")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    step: int
    total: int
    elapsed_s: float
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., step: _Optional[int] = ..., total: _Optional[int] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class VideoChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_s", "text_s", "denoise_s", "decode_s", "total_s")
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    TEXT_S_FIELD_NUMBER: _ClassVar[int]
    DENOISE_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    queued_s: float
    text_s: float
    denoise_s: float
    decode_s: float
    total_s: float
    def __init__(self, queued_s: _Optional[float] = ..., text_s: _Optional[float] = ..., denoise_s: _Optional[float] = ..., decode_s: _Optional[float] = ..., total_s: _Optional[float] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("job_id", "video_sha256", "video_bytes", "format", "frames", "height", "width", "fps", "steps", "seed", "latents_given", "timings", "identity", "client_request_id", "c2pa_manifest", "dit_calls", "dit_calls_saved", "schedule", "shift", "step_cache", "prompt_sha256", "negative_prompt_sha256", "guidance", "guidance_2", "model", "seed_chosen_by_server", "warnings")
    class IdentityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SHA256_FIELD_NUMBER: _ClassVar[int]
    VIDEO_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LATENTS_GIVEN_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    C2PA_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    DIT_CALLS_FIELD_NUMBER: _ClassVar[int]
    DIT_CALLS_SAVED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    STEP_CACHE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_2_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEED_CHOSEN_BY_SERVER_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    video_sha256: str
    video_bytes: int
    format: VideoFormat
    frames: int
    height: int
    width: int
    fps: int
    steps: int
    seed: int
    latents_given: bool
    timings: Timings
    identity: _containers.ScalarMap[str, str]
    client_request_id: str
    c2pa_manifest: bytes
    dit_calls: int
    dit_calls_saved: int
    schedule: str
    shift: float
    step_cache: float
    prompt_sha256: str
    negative_prompt_sha256: str
    guidance: float
    guidance_2: float
    model: str
    seed_chosen_by_server: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., video_sha256: _Optional[str] = ..., video_bytes: _Optional[int] = ..., format: _Optional[_Union[VideoFormat, str]] = ..., frames: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., fps: _Optional[int] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ..., latents_given: _Optional[bool] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., identity: _Optional[_Mapping[str, str]] = ..., client_request_id: _Optional[str] = ..., c2pa_manifest: _Optional[bytes] = ..., dit_calls: _Optional[int] = ..., dit_calls_saved: _Optional[int] = ..., schedule: _Optional[str] = ..., shift: _Optional[float] = ..., step_cache: _Optional[float] = ..., prompt_sha256: _Optional[str] = ..., negative_prompt_sha256: _Optional[str] = ..., guidance: _Optional[float] = ..., guidance_2: _Optional[float] = ..., model: _Optional[str] = ..., seed_chosen_by_server: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_frames", "frame_multiple", "min_size", "max_height", "max_width", "size_multiple", "max_steps", "max_guidance", "max_fps", "max_prompt_bytes", "max_request_bytes")
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FRAME_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SIZE_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_frames: int
    frame_multiple: int
    min_size: int
    max_height: int
    max_width: int
    size_multiple: int
    max_steps: int
    max_guidance: float
    max_fps: int
    max_prompt_bytes: int
    max_request_bytes: int
    def __init__(self, max_frames: _Optional[int] = ..., frame_multiple: _Optional[int] = ..., min_size: _Optional[int] = ..., max_height: _Optional[int] = ..., max_width: _Optional[int] = ..., size_multiple: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_guidance: _Optional[float] = ..., max_fps: _Optional[int] = ..., max_prompt_bytes: _Optional[int] = ..., max_request_bytes: _Optional[int] = ...) -> None: ...

class Defaults(_message.Message):
    __slots__ = ("frames", "height", "width", "steps", "guidance", "seed", "fps", "guidance_2", "schedule", "shift")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_2_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    fps: int
    guidance_2: float
    schedule: str
    shift: float
    def __init__(self, frames: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., seed: _Optional[int] = ..., fps: _Optional[int] = ..., guidance_2: _Optional[float] = ..., schedule: _Optional[str] = ..., shift: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("identity", "limits", "defaults", "experts", "boundary_ratio", "latent_channels", "vae_scale_temporal", "vae_scale_spatial", "workers", "queue_size", "server_version")
    class IdentityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_RATIO_FIELD_NUMBER: _ClassVar[int]
    LATENT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    VAE_SCALE_TEMPORAL_FIELD_NUMBER: _ClassVar[int]
    VAE_SCALE_SPATIAL_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    identity: _containers.ScalarMap[str, str]
    limits: Limits
    defaults: Defaults
    experts: _containers.RepeatedScalarFieldContainer[str]
    boundary_ratio: float
    latent_channels: int
    vae_scale_temporal: int
    vae_scale_spatial: int
    workers: int
    queue_size: int
    server_version: str
    def __init__(self, identity: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., defaults: _Optional[_Union[Defaults, _Mapping]] = ..., experts: _Optional[_Iterable[str]] = ..., boundary_ratio: _Optional[float] = ..., latent_channels: _Optional[int] = ..., vae_scale_temporal: _Optional[int] = ..., vae_scale_spatial: _Optional[int] = ..., workers: _Optional[int] = ..., queue_size: _Optional[int] = ..., server_version: _Optional[str] = ...) -> None: ...
