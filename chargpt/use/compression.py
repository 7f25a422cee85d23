"""A lossless compressor whose size is the model's BPC: range coding (constriction) driven by the next-byte
distribution of a trained model.

The bytes are scored exactly as `evaluate` scores a split (chargpt.evaluation.scoring.window_plan; consecutive windows,
or sliding ones with `stride`): the first byte is stored as it is, and every other byte is coded with the
probability the model gives it from the bytes before it in its window. So the coded size is the file's BPC x its
length / 8, plus the header and, for the parallel decoding below, one stored byte per lane.

Decoding must see bit for bit the probabilities the encoder saw. Both compute them the same way: the windows are
cut into `lanes` runs of consecutive windows that are coded side by side, a position at a time, each new byte
fed through the model once (a KV cache). A lane's first input byte is the last byte of the lane before it, which
the decoder does not have yet: it is stored. Sliding windows overlap, so they go one at a time, in order; with
`dynamic` too, and the model learns from each group of windows after coding them, exactly as dynamic evaluation
scores them.

The same arithmetic on another machine can round differently (another torch build, CPU instruction set or thread
count), and one different rounding makes the rest of the output garbage. So the header pins what decoding needs:
the model file's sha256, the protocol, the length and the data's sha256, torch's version, the device, the CPU's
instruction set and the thread count. decompress refuses a mismatch of the others, runs with the header's thread
count (and restores its own after), and checks the data's sha256 at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chargpt.errors import CompressionError
from chargpt.evaluation.config import DynamicEvalConfig, MixtureConfig
from chargpt.evaluation.mixture import Mixture
from chargpt.evaluation.scoring import DynamicEvaluation, check_stride, scored_mask, window_length, window_plan
from chargpt.io import atomic_open
from chargpt.model.gpt import GPT
from chargpt.settings import format_validation_error
from chargpt.train.checkpoint import needed_rms

MAGIC = b"CHARGPT\x00"
# 4: as 3, where a mixture picks its weights by each side's confidence too. 3: MAGIC, the header's length (<I), the
# header (compact JSON, deflated: a third of the bytes, which counts on short files), its CRC-32 (<I), then the
# payload (stored bytes and the range coder's words), whose length and CRC-32 the header records: damage and
# truncation are refused before any decoding. 2: the same with the JSON as it is and the payload's sha256. 1: neither
# the CRC nor the payload's checksum (read, checked only after decoding).
FORMAT = 4
OLD_MIXTURE = "2600bd6"  # the last commit whose mixture decodes the files of formats 1 to 3 that hold one
MAX_HEADER = 1 << 16  # bytes a format-3 header may inflate to
DEFAULT_LANES = 32
MAX_LANES = 1024  # windows coded side by side; each lane holds a KV cache
DEFAULT_MAX_LENGTH = 4 << 30  # bytes a header may declare before decompress allocates them (--max-length)
SHA256 = Field(pattern=r"^[0-9a-f]{64}$")
SHORT_TEXT = Field(max_length=100)


class Protocol(BaseModel):
    """How the bytes were coded: what `compress` accepts, and nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True)
    context: int = Field(ge=1)
    lanes: int = Field(ge=1, le=MAX_LANES)
    stride: int | None = Field(default=None, ge=1)  # the first release's format-1 files have none
    dynamic: dict | None = None  # a DynamicEvalConfig, checked as one
    mixture: dict | None = None  # a MixtureConfig, checked as one


class Header(BaseModel):
    """A compressed file's header, typed and bounded: checked before decompress allocates or runs anything."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: int = Field(ge=1, le=FORMAT)
    length: int = Field(ge=0)
    sha256: str = SHA256
    model_sha256: str = SHA256
    protocol: Protocol
    torch: str = SHORT_TEXT
    device: str = SHORT_TEXT
    cpu_capability: str = SHORT_TEXT
    threads: int = Field(ge=1)
    payload_bytes: int | None = Field(default=None, ge=0)  # formats 2 and 3
    payload_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # format 2
    payload_crc32: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)  # format 3


def check_header(header: dict, source: str, max_length: int = DEFAULT_MAX_LENGTH, limit: str = "--max-length") -> dict:
    """The header with its defaults, if every field is of its type and in its range, by the rules compress applies:
    refused in one line before any of it is used (a crafted file computes its own CRC and sha256)."""
    where = "protocol"
    try:
        checked = Header(**header)
        protocol = checked.protocol
        where = "protocol.dynamic"
        dynamic = DynamicEvalConfig(**protocol.dynamic) if protocol.dynamic is not None else None
        where = "protocol.mixture"
        if protocol.mixture is not None:
            MixtureConfig(**protocol.mixture)
    except ValidationError as e:
        in_section = (lambda loc: ".".join((where, *map(str, loc)))) if where != "protocol" else None
        raise CompressionError(f"{source}: invalid header: {format_validation_error(e, in_section)}") from None
    except TypeError as e:  # not a mapping where one belongs
        raise CompressionError(f"{source}: invalid header: {e}") from None
    try:
        check_stride(protocol.stride, protocol.context)
        check_stride(dynamic.stride if dynamic else None, protocol.context)
    except ValueError as e:
        raise CompressionError(f"{source}: invalid header: protocol.{e}") from None
    if protocol.mixture is not None and checked.format < 4:
        raise CompressionError(
            f"{source}: format {checked.format}, mixed by the mixture before its weights followed each side's "
            f"confidence; this version decodes it differently. Decompress it with chargpt at commit {OLD_MIXTURE}"
        )
    if checked.length > max_length:
        raise CompressionError(
            f"{source}: its header declares {checked.length:,} bytes, more than {limit} ({max_length:,} bytes)"
        )
    if checked.threads > (cores := os.cpu_count() or 1):
        raise CompressionError(f"{source}: invalid header: threads {checked.threads} exceeds this machine's {cores}")
    return checked.model_dump()


def environment() -> dict:
    """What must match between the compressing and the decompressing machine."""
    return {
        "torch": torch.__version__,
        "device": "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


@dataclass
class Stats:
    n_bytes: int
    compressed_bytes: int
    header_bytes: int
    seconds: float

    @property
    def bits_per_byte(self) -> float:
        return self.compressed_bytes * 8 / max(self.n_bytes, 1)


def _layout(n: int, context: int, lanes: int) -> tuple[list[tuple[int, int]], list[list[int]], list[int]]:
    """The windows (start, scored) of evaluate's protocol; the full windows of each lane; the windows left for last,
    one at a time (the shorter last window, which reuses bytes of the window before it)."""
    plan = window_plan(n, context, context)
    T = window_length(n, context)
    full = [i for i, (_, k) in enumerate(plan) if k == T]
    rest = [i for i, (_, k) in enumerate(plan) if k != T]
    per_lane = math.ceil(len(full) / max(1, min(lanes, len(full)))) if full else 1
    groups = [full[i : i + per_lane] for i in range(0, len(full), per_lane)]
    return plan, groups, rest


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=-1).numpy()


def _walk_coding_order(
    model: GPT,
    n: int,
    context: int,
    lanes: int,
    stride: int | None,
    dynamic: DynamicEvalConfig | None,
    mixture: MixtureConfig | None,
    buf: bytearray,
    code_bytes: Callable[[np.ndarray, list[int]], None],
    rms: dict | None = None,
) -> None:
    """Walk the bytes in coding order, computing each one's distribution; `code_bytes(probabilities (m, 256),
    positions)` codes the bytes at those positions of `buf` (the encoder reads them, the decoder writes them).
    rms: the model file's dynamic_rms, for dynamic evaluation's rms update."""
    if mixture:  # the context model counts the bytes in the text's order, so they go in order
        code_bytes = _mixed(Mixture(mixture, first=buf[0]), buf, code_bytes)
    if _in_order(context, stride, dynamic, mixture):
        learner = DynamicEvaluation(model, dynamic, rms) if dynamic else None
        _walk_in_order(model, n, context, dynamic.stride if dynamic else stride, learner, buf, code_bytes)
        return
    plan, groups, rest = _layout(n, context, lanes)
    T = window_length(n, context)
    with torch.inference_mode():
        for slot in range(max((len(g) for g in groups), default=0)):
            active = [g[slot] for g in groups if slot < len(g)]
            cache = model.new_cache()
            for q in range(T):  # full windows: position q predicts byte start + q + 1
                x = torch.tensor([[buf[plan[w][0] + q]] for w in active])
                logits = model(x, cache=cache)[0][:, -1]  # (lanes, vocab)
                code_bytes(_probabilities(logits), [plan[w][0] + q + 1 for w in active])
    for w in rest:  # the last, shorter window: its first T - k inputs are bytes already coded
        _walk_window(model, plan[w], T, buf, code_bytes)


def _walk_window(
    model: GPT, window: tuple[int, int], T: int, buf: bytearray, code_bytes: Callable[[np.ndarray, list[int]], None]
) -> None:
    """One window (start, scored) alone: its unscored inputs in one pass, then a position at a time."""
    start, k = window
    cache = model.new_cache()
    with torch.inference_mode():
        logits = model(torch.tensor([list(buf[start : start + T - k + 1])]), cache=cache)[0][:, -1]
        code_bytes(_probabilities(logits), [start + T - k + 1])
        for q in range(T - k + 1, T):
            logits = model(torch.tensor([[buf[start + q]]]), cache=cache)[0][:, -1]
            code_bytes(_probabilities(logits), [start + q + 1])


def _walk_in_order(
    model: GPT,
    n: int,
    context: int,
    stride: int | None,
    learner: DynamicEvaluation | None,
    buf: bytearray,
    code_bytes: Callable[[np.ndarray, list[int]], None],
) -> None:
    """The windows one at a time, in order (sliding windows overlap, so no lane could start without the bytes
    before it). With a `learner`, dynamic evaluation's walk (chargpt.evaluation.scoring.dynamic_score): after each
    group of its settings' `windows` windows, the same update on the bytes just coded."""
    plan = window_plan(n, context, stride or context)
    T = window_length(n, context)
    step = learner.settings.windows if learner else len(plan)
    for i in range(0, len(plan), step):
        group = plan[i : i + step]
        for window in group:
            _walk_window(learner.model if learner else model, window, T, buf, code_bytes)
        if learner:
            chunk = torch.tensor([list(buf[start : start + T + 1]) for start, _ in group])
            learner.update(chunk, scored_mask(T, torch.tensor([k for _, k in group])))


def _mixed(
    mixture: Mixture, buf: bytearray, code_bytes: Callable[[np.ndarray, list[int]], None]
) -> Callable[[np.ndarray, list[int]], None]:
    """code_bytes with the model's distributions mixed with the context model's, a byte at a time: each coded with
    the mixture of the bytes before it, then learned from."""

    def code_mixed(probabilities: np.ndarray, positions: list[int]) -> None:
        for row, p in zip(probabilities, positions):
            code_bytes(mixture.predict(row)[None], [p])  # the decoder writes buf[p] here
            mixture.learn(buf[p])

    return code_mixed


def _in_order(
    context: int, stride: int | None, dynamic: DynamicEvalConfig | None, mixture: MixtureConfig | None
) -> bool:
    return dynamic is not None or mixture is not None or (stride or context) != context


def _stored_positions(n: int, context: int, lanes: int, in_order: bool) -> list[int]:
    """The bytes stored as they are: the first, and each lane's first input byte after the first lane."""
    if n < 2:
        return list(range(n))
    if in_order:
        return [0]
    plan, groups, _ = _layout(n, context, lanes)
    return [0] + [plan[g[0]][0] for g in groups[1:]]


def compress(
    model: GPT,
    model_sha256: str,
    data: bytes,
    dynamic: DynamicEvalConfig | None = None,
    lanes: int = DEFAULT_LANES,
    stride: int | None = None,
    mixture: MixtureConfig | None = None,
    rms: dict | None = None,
) -> tuple[bytes, Stats]:
    """stride: score sliding windows (each byte sees at least context - stride bytes; coded in order, one window at
    a time); with `dynamic`, its own stride applies (rms: the model file's dynamic_rms, which its rms update needs).
    mixture: mix the model with a context model of the bytes before (coded in order too)."""
    start = time.perf_counter()
    n, context = len(data), model.cfg.context
    check_stride(stride, context)
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes {lanes} must be between 1 and {MAX_LANES}")
    header = {
        "format": FORMAT,
        "length": n,
        "sha256": hashlib.sha256(data).hexdigest(),
        "model_sha256": model_sha256,
        "protocol": {
            "context": context,
            "lanes": lanes,
            "stride": stride,
            "dynamic": dynamic.model_dump() if dynamic else None,
            "mixture": mixture.model_dump() if mixture else None,
        },
        **environment(),
    }
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    if n >= 2:

        def encode_bytes(probabilities: np.ndarray, positions: list[int]) -> None:
            encoder.encode(np.array([data[p] for p in positions], dtype=np.int32), family, probabilities)

        _walk_coding_order(model, n, context, lanes, stride, dynamic, mixture, bytearray(data), encode_bytes, rms)
    in_order = _in_order(context, stride, dynamic, mixture)
    stored = bytes(data[p] for p in _stored_positions(n, context, lanes, in_order))
    payload = stored + encoder.get_compressed().astype("<u4").tobytes()
    header |= {"payload_bytes": len(payload), "payload_crc32": zlib.crc32(payload)}
    head = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode(), 9)
    out = MAGIC + struct.pack("<I", len(head)) + head + struct.pack("<I", zlib.crc32(head)) + payload
    return out, Stats(n, len(out), len(out) - len(payload), time.perf_counter() - start)


def read_header(
    blob: bytes, source: str, max_length: int = DEFAULT_MAX_LENGTH, limit: str = "--max-length"
) -> tuple[dict, int]:
    """The header, and where the payload starts: refused at once, naming what is wrong, if the file is not ours, is
    truncated, or its header or payload is damaged (formats 2 and 3; a format-1 file is checked after decoding
    only)."""
    if not blob.startswith(MAGIC):
        raise CompressionError(f"{source}: not a chargpt-compressed file (it does not start with {MAGIC!r})")
    start = len(MAGIC) + 4
    if len(blob) < start:
        raise CompressionError(f"{source}: truncated: {len(blob)} bytes, shorter than the header's length field")
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    head = blob[start : start + size]
    crc = blob[start + size : start + size + 4]
    if head.startswith(b"{"):  # formats 1 and 2 store the JSON as it is
        try:
            header = json.loads(head)
        except ValueError:
            header = None
        if isinstance(header, dict) and header.get("format") == 1 and "payload_sha256" not in header:
            return check_header(header, source, max_length, limit), start + size
    if len(crc) < 4:
        raise CompressionError(f"{source}: truncated: {len(blob)} bytes, shorter than its header ({size} bytes) needs")
    if zlib.crc32(head) != struct.unpack("<I", crc)[0]:
        raise CompressionError(f"{source}: damaged header (its CRC-32 does not match)")
    try:
        header = json.loads(head if head.startswith(b"{") else _inflated(head, source))
    except ValueError:
        header = None
    version = header.get("format") if isinstance(header, dict) else None
    if version not in ((2,) if head.startswith(b"{") else (3, FORMAT)):  # 3 and 4 deflate the header, 2 does not
        raise CompressionError(f"{source}: format {version!r}; this version reads formats 1 to {FORMAT}")
    header = check_header(header, source, max_length, limit)
    check_payload(blob[start + size + 4 :], header, source)
    return header, start + size + 4


def _inflated(head: bytes, source: str) -> bytes:
    """A format-3 header's JSON, inflated to at most MAX_HEADER bytes (a crafted one could inflate without end)."""
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(head, MAX_HEADER)
    except zlib.error:
        return b""  # not a deflated header either: refused as no format
    if inflate.unconsumed_tail:
        raise CompressionError(f"{source}: invalid header: it inflates past {MAX_HEADER:,} bytes")
    return text if inflate.eof else b""


def check_payload(payload: bytes, header: dict, source: str) -> None:
    """A payload has the length and checksum its header records: format 2 its sha256, format 3 its CRC-32 (the
    decoded data's sha256 is checked at the end either way)."""
    checksum = "payload_sha256" if header["format"] == 2 else "payload_crc32"
    if header["payload_bytes"] is None or header[checksum] is None:
        raise CompressionError(
            f"{source}: invalid header: format {header['format']} records payload_bytes and {checksum}"
        )
    if len(payload) != header["payload_bytes"]:
        raise CompressionError(f"{source}: truncated or extended: a payload of {len(payload)} bytes where the header "
                               f"records {header['payload_bytes']}")  # fmt: skip
    actual = hashlib.sha256(payload).hexdigest() if header["format"] == 2 else zlib.crc32(payload)
    if actual != header[checksum]:
        name = "sha256" if header["format"] == 2 else "CRC-32"
        raise CompressionError(f"{source}: damaged payload (its {name} does not match the header's)")


def check_setup(header: dict, model_sha256: str, model_file: str, source: str) -> None:
    """Refuse to decode with another model or on a setup that may round differently, naming what differs."""
    if header["model_sha256"] != model_sha256:
        raise CompressionError(
            f"{source}: compressed with the model of sha256 {header['model_sha256'][:16]}..., and "
            f"{model_file} is {model_sha256[:16]}...; decompress with the same model file"
        )
    here = environment() | {"threads": header["threads"]}  # the thread count is set from the header
    if diff := {k: (header[k], here[k]) for k in here if header.get(k) != here[k]}:
        listed = ", ".join(f"{k}: compressed with {a!r}, here {b!r}" for k, (a, b) in diff.items())
        raise CompressionError(
            f"{source}: made on another setup ({listed}); the model's arithmetic could round "
            f"differently here and the output would be wrong. Decompress where it was compressed"
        )


def decompress(
    model: GPT,
    model_sha256: str,
    blob: bytes,
    source: str = "input",
    model_file: str = "model",
    max_length: int = DEFAULT_MAX_LENGTH,
    limit: str = "--max-length",
    rms: dict | None = None,
) -> tuple[bytes, Stats]:
    """max_length: the most bytes a header may declare (`limit` says where that bound comes from); rms: the model
    file's dynamic_rms, where the header's dynamic evaluation updates by it."""
    start = time.perf_counter()
    header, offset = read_header(blob, source, max_length, limit)
    check_setup(header, model_sha256, model_file, source)
    n, context = header["length"], header["protocol"]["context"]
    lanes, dynamic, stride = header["protocol"]["lanes"], header["protocol"]["dynamic"], header["protocol"]["stride"]
    dynamic = DynamicEvalConfig(**dynamic) if dynamic else None
    mixture = MixtureConfig(**header["protocol"]["mixture"]) if header["protocol"]["mixture"] else None
    rms = needed_rms(model_file, rms, dynamic and dynamic.optimizer)
    if context != model.cfg.context:
        raise CompressionError(f"{source}: coded with context {context}, the model's is {model.cfg.context}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(header["threads"])
    try:
        buf = bytearray(n)
        stored = _stored_positions(n, context, lanes, _in_order(context, stride, dynamic, mixture))
        for i, p in enumerate(stored):
            buf[p] = blob[offset + i]
        words = np.frombuffer(blob[offset + len(stored) :], dtype="<u4")
        decoder = constriction.stream.queue.RangeDecoder(words.astype(np.uint32))
        family = constriction.stream.model.Categorical(perfect=False)
        if n >= 2:

            def decode_bytes(probabilities: np.ndarray, positions: list[int]) -> None:
                for p, byte in zip(positions, decoder.decode(family, probabilities)):
                    buf[p] = int(byte)

            _walk_coding_order(model, n, context, lanes, stride, dynamic, mixture, buf, decode_bytes, rms)
    finally:
        torch.set_num_threads(previous_threads)
    data = bytes(buf)
    if hashlib.sha256(data).hexdigest() != header["sha256"]:
        raise CompressionError(
            f"{source}: the decoded bytes do not match the sha256 the compressor recorded; the file "
            f"is damaged, or this setup computes the model's probabilities differently"
        )
    return data, Stats(n, len(blob), offset, time.perf_counter() - start)


def write(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
