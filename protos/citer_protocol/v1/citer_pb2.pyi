from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_FAILURE_UNSPECIFIED: _ClassVar[SyncFailure]
    SESSION_UNKNOWN: _ClassVar[SyncFailure]
    SESSION_EVICTED: _ClassVar[SyncFailure]
    KNOWN_LEN_AHEAD: _ClassVar[SyncFailure]
SYNC_FAILURE_UNSPECIFIED: SyncFailure
SESSION_UNKNOWN: SyncFailure
SESSION_EVICTED: SyncFailure
KNOWN_LEN_AHEAD: SyncFailure

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_name", "tokenizer_fingerprint", "vocab_size", "max_context", "server_version", "backend", "max_request_tokens", "max_sessions", "features")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    tokenizer_fingerprint: str
    vocab_size: int
    max_context: int
    server_version: str
    backend: str
    max_request_tokens: int
    max_sessions: int
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_name: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ..., server_version: _Optional[str] = ..., backend: _Optional[str] = ..., max_request_tokens: _Optional[int] = ..., max_sessions: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("session_id", "known_len", "append", "max_tokens", "sampling", "verify_from", "span_below")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_LEN_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FROM_FIELD_NUMBER: _ClassVar[int]
    SPAN_BELOW_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    known_len: int
    append: _containers.RepeatedScalarFieldContainer[int]
    max_tokens: int
    sampling: SamplingParams
    verify_from: int
    span_below: float
    def __init__(self, session_id: _Optional[str] = ..., known_len: _Optional[int] = ..., append: _Optional[_Iterable[int]] = ..., max_tokens: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., verify_from: _Optional[int] = ..., span_below: _Optional[float] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("tokens", "logprobs", "new_len", "finished", "accepted", "verified")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    NEW_LEN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    new_len: int
    finished: bool
    accepted: int
    verified: bool
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., new_len: _Optional[int] = ..., finished: _Optional[bool] = ..., accepted: _Optional[int] = ..., verified: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "max_tokens", "sampling")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    prompt: _containers.RepeatedScalarFieldContainer[int]
    max_tokens: int
    sampling: SamplingParams
    def __init__(self, prompt: _Optional[_Iterable[int]] = ..., max_tokens: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token", "logprob", "finished")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    token: int
    logprob: float
    finished: bool
    def __init__(self, token: _Optional[int] = ..., logprob: _Optional[float] = ..., finished: _Optional[bool] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("tokens_prefilled", "tokens_generated", "forward_passes", "live_sessions", "sessions_created", "sessions_evicted", "kv_tokens_used", "kv_tokens_capacity", "decode_requests", "drafts_accepted", "drafts_rejected")
    TOKENS_PREFILLED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    LIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_CREATED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DECODE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    tokens_prefilled: int
    tokens_generated: int
    forward_passes: int
    live_sessions: int
    sessions_created: int
    sessions_evicted: int
    kv_tokens_used: int
    kv_tokens_capacity: int
    decode_requests: int
    drafts_accepted: int
    drafts_rejected: int
    def __init__(self, tokens_prefilled: _Optional[int] = ..., tokens_generated: _Optional[int] = ..., forward_passes: _Optional[int] = ..., live_sessions: _Optional[int] = ..., sessions_created: _Optional[int] = ..., sessions_evicted: _Optional[int] = ..., kv_tokens_used: _Optional[int] = ..., kv_tokens_capacity: _Optional[int] = ..., decode_requests: _Optional[int] = ..., drafts_accepted: _Optional[int] = ..., drafts_rejected: _Optional[int] = ...) -> None: ...
