"""The teacher step of the paper (section 3.1, Table 1): rationales that agree with the true score.

For every (participant, PHQ item) of the train and dev splits, a large "teacher" LLM is shown the
interview transcript and the participant's *true* item score and asked for an
``Evaluation Reason:``; the text after that prefix becomes the stage-2 training target's
rationale (``rationales.jsonl``, schema in :mod:`mllm_dr.data.rationales`). The teacher sees the label so the
rationale is consistent with it; that is why only train/dev are distilled by default.

Teachers: a local causal LM (``--teacher local``) or an OpenAI-compatible chat-completions
endpoint (``--teacher openai``). E-DAIC-WOZ, DAIC-WOZ and CMDC are licensed corpora whose
end-user licence agreements forbid sharing transcripts: an endpoint that is not on this machine
(anything but 127.0.0.0/8, ::1, ``localhost``) is refused unless ``--allow-remote`` is given.

Every record is appended (line-atomic) as soon as its reply is accepted, and keys already in the
output are skipped, so a killed run resumes losing nothing and redoing nothing. Replies that break
the format are retried and then recorded in ``rationales.failures.jsonl`` (a rerun retries them).
One run at a time writes an output file (a second one is refused at once, :func:`output_lock`).
Each request has a total deadline, and a run stops after ``max_consecutive_failures`` items in a
row got no reply from the endpoint (everything written stays; a rerun resumes).

    mllm-dr-distill --dataset_format edaic --data_dir /data/E-DAIC \\
        --teacher local --teacher_model path/to/Llama-3-70B-Instruct --rationales runs/rationales.jsonl
    OPENAI_API_KEY=... mllm-dr-distill --dataset_format prepared --data_dir runs/corpus \\
        --teacher openai --api_base http://127.0.0.1:8000/v1 --teacher_model my-served-model \\
        --rationales runs/rationales.jsonl
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import operator
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from processing_mllm_dr import DEFAULT_SYSTEM_PROMPT, PHQ9_ITEMS, REASON_PREFIX
from .data.rationales import Rationale, RationaleWriter
from .io import exclusive_lock, read_jsonl, write_text_atomic

logger = logging.getLogger("mllm_dr.distillation")

PROMPT_VERSION = "table1-v1"
# Paper Table 1, user turn (the system turn is processing_mllm_dr.DEFAULT_SYSTEM_PROMPT).
TEACHER_INSTRUCTION = (
    "Given the participant's self-rating score of {label}, please evaluate the participant's performance in "
    "{aspect} based on the dialogue content. The output format is as follows: Evaluation Reason: A concise and "
    "logical description. Each output must strictly follow this format, avoiding omissions or confusion."
)
# An option, off by default: the same prompt asking for one or two verbatim quotes, so that the
# rationales carry evidence that mllm_dr.evidence can check against the transcript.
QUOTE_REQUEST = (
    " In the reason, quote one or two of the participant's own sentences that support the score, verbatim and "
    "in double quotes, exactly as they appear in the dialogue."
)


@dataclass(frozen=True)
class TeacherPrompt:
    """One teacher prompt: its user-turn instruction (``{label}``, ``{aspect}``) and the
    ``prompt_version`` stored in every record it produces."""

    instruction: str
    version: str


TEACHER_PROMPTS: dict[str, TeacherPrompt] = {
    "table1": TeacherPrompt(TEACHER_INSTRUCTION, PROMPT_VERSION),  # the paper's, the default
    "table1_quotes": TeacherPrompt(TEACHER_INSTRUCTION + QUOTE_REQUEST, "table1-quotes-v1"),
}
DEFAULT_TEACHER_PROMPT = "table1"
DEFAULT_SPLITS = ("train", "dev")
ROW_FIELDS = ("participant_id", "item_index", "item_name", "transcript", "label", "split")
LICENCE_NOTICE = (
    "E-DAIC-WOZ, DAIC-WOZ and CMDC are distributed under end-user licence agreements that forbid sharing "
    "the transcripts (or anything derived from them) with third parties; sending them to an API you do not "
    "run yourself may breach that agreement."
)
MAX_STORED_REPLY_CHARS = 2000
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5


# ----------------------------------------------------------------------------- prompt and reply
def item_aspect(item_index: int) -> str:
    """The PHQ aspect text of a 1-based item number (PHQ-8 items are PHQ-9's first eight)."""
    if not 1 <= item_index <= len(PHQ9_ITEMS):
        raise ValueError(f"item_index must be 1-{len(PHQ9_ITEMS)}, got {item_index}")
    return PHQ9_ITEMS[item_index - 1].aspect


def teacher_prompt(name: str) -> TeacherPrompt:
    """The :data:`TEACHER_PROMPTS` entry called ``name`` (``ValueError`` naming the choices)."""
    if name not in TEACHER_PROMPTS:
        raise ValueError(f"unknown teacher prompt {name!r} (choices: {', '.join(TEACHER_PROMPTS)})")
    return TEACHER_PROMPTS[name]


def build_messages(row: dict[str, Any], prompt: str = DEFAULT_TEACHER_PROMPT) -> list[dict[str, str]]:
    """Table 1's prompt: the system turn, then the dialogue followed by the instruction (``prompt``:
    a :data:`TEACHER_PROMPTS` name; ``table1_quotes`` also asks for one or two verbatim quotes)."""
    instruction = teacher_prompt(prompt).instruction.format(label=row["label"], aspect=item_aspect(row["item_index"]))
    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": f"{row['transcript'].strip()}\n\n{instruction}"},
    ]


class ReplyFormatError(ValueError):
    """A teacher reply that does not follow Table 1's output format."""


_TRAILING_SCORE = re.compile(r"(?:^|\n)[ \t*]*score[ \t*]*:[ \t*]*([0-9]+)[ \t*.]*\s*$", re.IGNORECASE)


def parse_reply(text: str | None, label: int | None = None) -> str:
    """The rationale in a teacher reply: the text after its single ``Evaluation Reason:``.

    A trailing ``Score: N`` line is dropped (and must equal ``label`` when given: a teacher that
    contradicts the true score wrote a rationale for another score). Raises ``ReplyFormatError``
    when the prefix is missing or repeated, nothing follows it, or ``Score:`` appears inside the
    rationale (the training target puts exactly one ``Score:`` after it).
    """
    if not text or not text.strip():
        raise ReplyFormatError("empty reply")
    lowered, prefix = text.lower(), REASON_PREFIX.lower()
    count = lowered.count(prefix)
    if count != 1:
        raise ReplyFormatError(f"expected exactly one {REASON_PREFIX!r}, found {count}")
    rationale = text[lowered.index(prefix) + len(prefix) :]
    score = _TRAILING_SCORE.search(rationale)
    if score is not None:
        if label is not None and int(score.group(1)) != int(label):
            raise ReplyFormatError(f"the reply's score {score.group(1)} differs from the label {label}")
        rationale = rationale[: score.start()]
    rationale = rationale.strip().lstrip("*").strip()  # '**Evaluation Reason:** ...'
    if not rationale:
        raise ReplyFormatError(f"nothing after {REASON_PREFIX!r}")
    if "score:" in rationale.lower():
        raise ReplyFormatError("'Score:' inside the rationale")
    return rationale


# ----------------------------------------------------------------------------- teachers
@dataclass(frozen=True)
class TeacherReply:
    """``text`` when the teacher answered; ``error`` when it could not (recorded, not retried).
    ``unreachable``: every attempt failed without an answer (connection refused or reset, deadline
    passed, 408/429/5xx after every retry), so the endpoint looks down; :func:`distill` stops after
    ``max_consecutive_failures`` such items in a row."""

    text: str | None = None
    error: str | None = None
    unreachable: bool = False


class Teacher(Protocol):
    name: str
    batch_size: int

    def generate(
        self, conversations: Sequence[list[dict[str, str]]], attempt: int = 0
    ) -> Iterator[tuple[int, TeacherReply]]:
        """Yields ``(index into conversations, reply)`` as replies arrive, in any order."""
        ...


class RemoteEndpointRefused(ValueError):
    """An endpoint off this machine without ``allow_remote``."""


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs on 127.0.0.0/8, ::1 (also IPv4-mapped) or ``localhost``. Host names are
    not resolved: any other name counts as remote."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def check_endpoint_allowed(api_base: str, allow_remote: bool) -> None:
    """Refuses (before any connection) to send transcripts off the machine without ``allow_remote``.

    User information (``user@`` or ``user:password@`` before the host) is refused whatever
    ``allow_remote`` says: with it the host that is checked and the host that is contacted can
    differ (``http://user@evil.example@127.0.0.1/`` reads differently to different parsers), and a
    password in a URL ends up in logs. The URL is not echoed then (it may hold a password).
    """
    parts = urllib.parse.urlsplit(api_base)
    if "@" in parts.netloc:
        raise ValueError(
            "--api_base must not contain user information ('user@' or 'user:password@' before the host): it hides "
            "which host is contacted. Give the host alone, e.g. http://127.0.0.1:8000/v1, and the key through "
            "--api_key_env"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--api_base must be an http(s) URL such as http://127.0.0.1:8000/v1, got {api_base!r}")
    if not allow_remote and not is_loopback_url(api_base):
        raise RemoteEndpointRefused(
            f"refusing to send interview transcripts to {parts.hostname}, which is not this machine. "
            f"{LICENCE_NOTICE} Use --teacher local or an endpoint on 127.0.0.1/localhost, or pass --allow-remote "
            "if your data-use agreement explicitly permits this endpoint."
        )


def remote_warning(api_base: str) -> str | None:
    """The one-line warning to show when ``api_base`` (already allowed) is not on this machine; None
    when it is."""
    if is_loopback_url(api_base):
        return None
    parts = urllib.parse.urlsplit(api_base)
    clear = " over unencrypted http" if parts.scheme == "http" else ""
    return (
        f"warning: --allow-remote: interview transcripts and labels will be sent to {parts.hostname}{clear}, which is "
        "not this machine; make sure your data-use agreement permits it (E-DAIC-WOZ, DAIC-WOZ and CMDC licences "
        "forbid sharing transcripts with third parties)"
    )


class RequestDeadlineExceeded(TimeoutError):
    """A request that had no complete reply within its total deadline."""


class _Deadline:
    """A request's total deadline: when it passes, every socket the request opened is shut down, so
    a blocked read returns at once however slowly the server sends (a socket timeout only bounds
    the wait for the *next* byte)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    """Shuts the connection down under a (possibly TLS) socket that another thread may be reading;
    the plain-socket method, so that a TLS wrapper's state is not touched from this thread."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()  # TCP, proxy tunnel, TLS handshake (each read bounded by the socket timeout)
        self._deadline.watch(self.sock)


_WATCHED = {http.client.HTTPConnection: _WatchedHTTPConnection, http.client.HTTPSConnection: _WatchedHTTPSConnection}


class _DeadlineMixin:
    """Makes a urllib HTTP(S) handler open connections that ``deadline`` watches."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_WATCHED[http_class], req, deadline=self.deadline, **kwargs)


class _DeadlineHTTPHandler(_DeadlineMixin, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPSHandler(_DeadlineMixin, urllib.request.HTTPSHandler):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could carry the transcript and the key elsewhere: treat it as an error instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(3xx), which fails the item


class OpenAICompatibleTeacher:
    """``POST {api_base}/chat/completions`` (OpenAI format), one request per item.

    ``timeout`` is each request's total deadline (connect, send, and the complete reply), enforced
    however slowly the server sends. Transient failures (connection errors, deadline, 408, 429,
    5xx) are retried ``http_retries`` times with exponential back-off from ``retry_base_delay`` (a
    ``Retry-After`` header can lengthen it); other statuses fail that item at once. The API key goes
    only into the Authorization header and is redacted from anything returned (error bodies included).
    """

    def __init__(
        self,
        api_base: str,
        model: str,
        api_key: str | None = None,
        allow_remote: bool = False,
        name: str | None = None,
        timeout: float = 120.0,
        http_retries: int = 5,
        retry_base_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        num_workers: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        check_endpoint_allowed(api_base, allow_remote)
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = name or model
        self._api_key = api_key or None
        self.timeout = float(timeout)
        self.http_retries = max(0, int(http_retries))
        self.retry_base_delay = retry_base_delay
        self.max_retry_delay = max_retry_delay
        self.num_workers = max(1, int(num_workers))
        self.batch_size = self.num_workers
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.sleep = sleep
        self._loopback = is_loopback_url(api_base)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatibleTeacher(url={self.url!r}, model={self.model!r})"

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "[REDACTED]") if self._api_key else text

    def _opener(self, deadline: _Deadline) -> urllib.request.OpenerDirector:
        """An opener whose connections ``deadline`` watches; a loopback endpoint never goes through a
        proxy (which would take the data off the machine), and no redirect is followed."""
        handlers: list[urllib.request.BaseHandler] = [
            _NoRedirect(),
            _DeadlineHTTPHandler(deadline),
            _DeadlineHTTPSHandler(deadline),
        ]
        if self._loopback:
            handlers.append(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener(*handlers)

    def _request(self, messages: list[dict[str, str]]) -> urllib.request.Request:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")

    def _exchange(self, messages: list[dict[str, str]]) -> tuple[int, str, bytes, Any]:
        """``(status, reason, body, headers)`` of one request, all of it read within the deadline
        (an error status's body: its first 500 bytes). Raises ``RequestDeadlineExceeded`` when the
        deadline passes, ``URLError``/``OSError``/``HTTPException`` when no answer came."""
        with _Deadline(self.timeout) as deadline:
            try:
                try:
                    with self._opener(deadline).open(self._request(messages), timeout=self.timeout) as response:
                        answer = (response.status, response.reason, response.read(), response.headers)
                except urllib.error.HTTPError as error:
                    answer = (error.code, str(error.reason), _error_body(error), error.headers)
            except (urllib.error.URLError, http.client.HTTPException, OSError):
                if deadline.expired:
                    raise self._deadline_error() from None
                raise
            if deadline.expired:  # a cut-off reply can read as a short one
                raise self._deadline_error()
        return answer

    def _deadline_error(self) -> RequestDeadlineExceeded:
        return RequestDeadlineExceeded(f"no complete reply within the {self.timeout:g} s deadline (--timeout)")

    def _backoff(self, retry: int, retry_after: str | None) -> float:
        delay = self.retry_base_delay * (2**retry)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.max_retry_delay)

    def complete(self, messages: list[dict[str, str]]) -> TeacherReply:
        """One chat completion, with the retry policy above."""
        last_error = "no attempt made"
        for attempt in range(self.http_retries + 1):
            retry_after = None
            try:
                status, reason, body, headers = self._exchange(messages)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:  # refused, reset, deadline
                last_error = self.redact(f"{type(error).__name__}: {getattr(error, 'reason', error)}")
            else:
                if 200 <= status < 300:
                    return TeacherReply(text=self.redact(_completion_text(body)))
                detail = body.decode("utf-8", "replace")
                last_error = self.redact(f"HTTP {status} {reason}: {detail}".strip())
                if status not in RETRYABLE_STATUS:
                    return TeacherReply(error=last_error)
                retry_after = headers.get("Retry-After") if headers else None
            if attempt < self.http_retries:
                delay = self._backoff(attempt, retry_after)
                logger.warning("%s (retry %d/%d in %.2f s)", last_error, attempt + 1, self.http_retries, delay)
                self.sleep(delay)
        return TeacherReply(error=f"gave up after {self.http_retries + 1} attempts: {last_error}", unreachable=True)

    def generate(
        self, conversations: Sequence[list[dict[str, str]]], attempt: int = 0
    ) -> Iterator[tuple[int, TeacherReply]]:
        if self.num_workers == 1:
            for index, messages in enumerate(conversations):
                yield index, self.complete(messages)
            return
        executor = ThreadPoolExecutor(max_workers=self.num_workers)
        try:
            futures = {executor.submit(self.complete, messages): index for index, messages in enumerate(conversations)}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            executor.shutdown(wait=False, cancel_futures=True)


def _error_body(error: urllib.error.HTTPError) -> bytes:
    """The first 500 bytes of an error status's body (closed after)."""
    if error.fp is None:
        return b""
    try:
        return error.read(500)
    finally:
        error.close()


def _completion_text(payload: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions response; an unusable body reads as an
    empty reply, which the format check then rejects (and retries)."""
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


class LocalTeacher:
    """A local causal LM with a chat template: batched, left-padded generation.

    Greedy by default; a retry after a malformed reply samples (``temperature``/``top_k``, the
    paper's 0.8/10), since greedy decoding would only repeat the same reply.
    """

    def __init__(
        self,
        model_path: str | Path,
        name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 0.8,
        top_k: int = 10,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = str(model_path)
        self.name = name or Path(self.model_path).resolve().name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.model_path}: the tokenizer has no chat_template (an instruction-tuned model is needed)"
            )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype).to(device).eval()
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_k = top_k

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat-template prompt; templates without a system role get it folded into the user turn."""
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # jinja2 TemplateError: e.g. "System role not supported"
            if messages[0]["role"] != "system":
                raise
            merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def generate(
        self, conversations: Sequence[list[dict[str, str]]], attempt: int = 0
    ) -> Iterator[tuple[int, TeacherReply]]:
        import torch

        sample = self.do_sample or attempt > 0
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        if sample:
            options.update(temperature=self.temperature, top_k=self.top_k)
        for start in range(0, len(conversations), self.batch_size):
            prompts = [self.render(messages) for messages in conversations[start : start + self.batch_size]]
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = inputs.to(self.device)
            with torch.inference_mode():
                output = self.model.generate(**inputs, pad_token_id=self.tokenizer.pad_token_id, **options)
            texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for offset, text in enumerate(texts):
                yield start + offset, TeacherReply(text=text)


# ----------------------------------------------------------------------------- rows and the loop
def validate_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One input row with its fields checked and normalised; errors name the row and the field."""
    missing = [name for name in ROW_FIELDS if name not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} (rows need {list(ROW_FIELDS)})")
    participant_id = row["participant_id"]
    if isinstance(participant_id, int) and not isinstance(participant_id, bool):
        participant_id = str(participant_id)
    if not isinstance(participant_id, str) or not participant_id:
        raise ValueError(f"{where}: participant_id must be a non-empty string, got {participant_id!r}")
    where = f"{where} (participant {participant_id})"
    values = {}
    for name, low, high in (("item_index", 1, len(PHQ9_ITEMS)), ("label", 0, 3)):
        value = row[name]
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise ValueError(f"{where}: {name} must be an integer {low}-{high}, got {value!r}") from None
        if not low <= value <= high:
            raise ValueError(f"{where}: {name} must be an integer {low}-{high}, got {value!r}")
        values[name] = value
    for name in ("item_name", "transcript", "split"):
        if not isinstance(row[name], str):
            raise ValueError(f"{where}: {name} must be a string, got {type(row[name]).__name__}")
    if not row["item_name"]:
        raise ValueError(f"{where}: item_name must be a non-empty string")
    return {
        "participant_id": participant_id,
        "item_index": values["item_index"],
        "item_name": row["item_name"],
        "transcript": row["transcript"],
        "label": values["label"],
        "split": row["split"],
    }


@dataclass
class DistillSummary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    unlabelled: int = 0
    failed_keys: list[tuple[str, int]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"written {self.written}, skipped (already done) {self.skipped}, failed {self.failed}"
        return text + (f", no label (not distilled) {self.unlabelled}" if self.unlabelled else "")


class EndpointUnreachable(RuntimeError):
    """The teacher's endpoint gave no answer for ``max_consecutive_failures`` items in a row;
    ``summary`` counts what the run did until then (everything written stays)."""

    def __init__(self, message: str, summary: DistillSummary):
        super().__init__(message)
        self.summary = summary


def output_lock_folder(output: str | Path) -> Path:
    """The folder whose lock guards ``output``: ``.<name>.lock`` beside it. One per output file, not
    the output's folder itself, so that distinct outputs in one folder (``runs/rationales_edaic.jsonl``
    and ``runs/rationales_cmdc.jsonl``, or an evaluation writing into ``runs/``) never block each
    other, while every path that names the same file (relative, absolute, through a link to its
    folder) meets the same lock."""
    output = Path(output).resolve()
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[None]:
    """Holds ``output``'s lock for the ``with`` block (:func:`mllm_dr.io.exclusive_lock` on
    :func:`output_lock_folder`); raises :class:`mllm_dr.io.FolderInUse` at once when another
    process holds it."""
    with exclusive_lock(output_lock_folder(output), f"mllm-dr-distill run writing {Path(output).name}"):
        yield


def _differing_fields(first: Rationale, second: Rationale) -> list[str]:
    return [name for name in first.__dataclass_fields__ if getattr(first, name) != getattr(second, name)]


def deduplicate_output(path: str | Path) -> int:
    """Checks the records already in ``path`` before a resumed run appends to it; returns how many
    repeated lines were dropped.

    A key written twice with the same record (every schema field equal: two runs that raced before
    runs were locked) is kept once: the file is rewritten atomically without the later copies, so
    that training (which refuses any repeated key) reads it. A key written twice with different
    records raises ``ValueError`` naming the file, both lines and the key: which one is right is not
    for the distiller to guess. Any invalid record raises naming file and line.
    """
    path = Path(path)
    first: dict[tuple[str, int], tuple[int, Rationale]] = {}
    kept: list[Any] = []
    repeated: list[int] = []
    for number, raw in read_jsonl(path):
        record = Rationale.from_dict(raw, f"{path}:{number}")
        if record.key not in first:
            first[record.key] = (number, record)
            kept.append(raw)
            continue
        earlier, previous = first[record.key]
        if previous != record:
            raise ValueError(
                f"{path}: lines {earlier} and {number} hold different records for key {record.key} "
                f"(participant {record.participant_id!r}, item {record.item_index}; they differ in "
                f"{', '.join(_differing_fields(previous, record))}): delete the wrong one and rerun"
            )
        repeated.append(number)
    if repeated:
        write_text_atomic(path, "".join(json.dumps(raw, ensure_ascii=False) + "\n" for raw in kept))
        logger.warning("%s: dropped %d repeated identical record(s) (line(s) %s)", path, len(repeated),
                       ", ".join(map(str, repeated)))
    return len(repeated)


def distill(
    rows: Iterable[dict[str, Any]],
    teacher: Teacher,
    output: str | Path,
    splits: Sequence[str] | None = DEFAULT_SPLITS,
    format_retries: int = 2,
    limit: int | None = None,
    progress: bool = True,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    prompt: str = DEFAULT_TEACHER_PROMPT,
) -> DistillSummary:
    """Asks ``teacher`` for a rationale for each row of ``splits`` (None: all) not yet in ``output``,
    with the :data:`TEACHER_PROMPTS` entry ``prompt`` (its version goes into every record).

    Accepted rationales are appended to ``output`` one by one as they arrive; a reply that breaks
    the format is asked again up to ``format_retries`` times, then recorded (with the reason and
    the last reply) in the failures file beside ``output``, as is a teacher error. Rows without a
    label (``None``) are counted, not distilled; any other invalid row raises before the teacher runs.

    The run holds :func:`output_lock` throughout (``FolderInUse`` at once, before any request, when
    another run writes ``output``); records already in ``output`` are checked by
    :func:`deduplicate_output`. After ``max_consecutive_failures`` items in a row that got no answer
    (``TeacherReply.unreachable``; any answer resets the count; 0: never stop) it raises
    :class:`EndpointUnreachable`.
    """
    teacher_prompt(prompt)  # an unknown name fails before the lock is taken
    with output_lock(output):
        deduplicate_output(output)
        return _distill(rows, teacher, output, splits, format_retries, limit, progress, max_consecutive_failures,
                        prompt)  # fmt: skip


def _distill(
    rows: Iterable[dict[str, Any]],
    teacher: Teacher,
    output: str | Path,
    splits: Sequence[str] | None,
    format_retries: int,
    limit: int | None,
    progress: bool,
    max_consecutive_failures: int,
    prompt: str = DEFAULT_TEACHER_PROMPT,
) -> DistillSummary:
    """:func:`distill`'s loop, under the output's lock."""
    from tqdm.auto import tqdm

    writer = RationaleWriter(output)
    summary = DistillSummary()
    todo = _select_rows(rows, writer, splits, summary)
    if limit is not None:
        todo = todo[:limit]
    bar = tqdm(total=len(todo), desc=f"rationales ({teacher.name})", unit="item", disable=not progress)
    run = _Run(teacher, writer, summary, bar, Path(output), format_retries, max_consecutive_failures, prompt)
    try:
        for start in range(0, len(todo), teacher.batch_size):
            run.batch(todo[start : start + teacher.batch_size])
    finally:
        bar.close()
    return summary


def _select_rows(
    rows: Iterable[dict[str, Any]], writer: RationaleWriter, splits: Sequence[str] | None, summary: DistillSummary
) -> list[dict[str, Any]]:
    """The validated rows of ``splits`` still to distil (once per key); counts the skipped and the
    unlabelled in ``summary``."""
    todo: list[dict[str, Any]] = []
    queued: set[tuple[str, int]] = set()
    mismatched_names: set[tuple[int, str]] = set()
    for number, raw in enumerate(rows):
        raw = dict(raw)
        if splits is not None and "split" in raw and raw["split"] not in splits:
            continue
        if raw.get("label", 0) is None:  # e.g. a participant without item labels: nothing to condition on
            summary.unlabelled += 1
            continue
        row = validate_row(raw, f"row {number}")
        key = (row["participant_id"], row["item_index"])
        if writer.has(*key) or key in queued:
            summary.skipped += 1
            continue
        expected_name = PHQ9_ITEMS[row["item_index"] - 1].name
        if row["item_name"] != expected_name and (row["item_index"], row["item_name"]) not in mismatched_names:
            mismatched_names.add((row["item_index"], row["item_name"]))
            logger.warning(
                "item %d is named %r in the data, %r in the PHQ table: the prompt uses the PHQ aspect",
                row["item_index"],
                row["item_name"],
                expected_name,
            )
        queued.add(key)
        todo.append(row)
    return todo


@dataclass
class _Run:
    """One distillation run's state: where records and failures go, the counts, and how many items
    in a row got no answer from the teacher."""

    teacher: Teacher
    writer: RationaleWriter
    summary: DistillSummary
    bar: Any
    output: Path
    format_retries: int
    max_consecutive_failures: int
    prompt: str = DEFAULT_TEACHER_PROMPT
    unreachable: int = 0

    def batch(self, rows: list[dict[str, Any]]) -> None:
        """Asks for ``rows`` together, asking again (up to ``format_retries`` times) for the replies
        that break the format; records every outcome."""
        pending = [row for row in rows if row["transcript"].strip()]
        for row in rows:
            if not row["transcript"].strip():
                self.fail(row, "empty transcript: nothing for the teacher to read", attempts=0)
        last_problem: dict[tuple[str, int], tuple[str, str]] = {}
        for attempt in range(self.format_retries + 1):
            if not pending:
                break
            retry = []
            for index, reply in self.teacher.generate([build_messages(row, self.prompt) for row in pending], attempt):
                row = pending[index]
                if reply.error is not None:
                    self.fail(row, reply.error, attempts=attempt + 1)
                else:
                    try:
                        self.accept(row, parse_reply(reply.text, row["label"]))
                    except ReplyFormatError as error:
                        last_problem[(row["participant_id"], row["item_index"])] = (str(error), reply.text or "")
                        retry.append(row)
                self.count_answer(reply)
            pending = retry
        for row in pending:
            problem, reply = last_problem[(row["participant_id"], row["item_index"])]
            self.fail(
                row,
                f"malformed reply after {self.format_retries + 1} attempts: {problem}",
                attempts=self.format_retries + 1,
                reply=reply[:MAX_STORED_REPLY_CHARS],
            )

    def accept(self, row: dict[str, Any], rationale: str) -> None:
        record = Rationale(
            participant_id=row["participant_id"],
            item_index=row["item_index"],
            item_name=row["item_name"],
            label=row["label"],
            rationale=rationale,
            teacher=self.teacher.name,
            prompt_version=teacher_prompt(self.prompt).version,
        )
        if self.writer.write(record):
            self.summary.written += 1
        else:  # the key is already there
            self.summary.skipped += 1
        self.bar.update()

    def fail(self, row: dict[str, Any], reason: str, **extra: Any) -> None:
        self.writer.write_failure(
            row["participant_id"],
            row["item_index"],
            reason,
            item_name=row["item_name"],
            split=row["split"],
            teacher=self.teacher.name,
            prompt_version=teacher_prompt(self.prompt).version,
            time=datetime.now(timezone.utc).isoformat(),
            **extra,
        )
        self.summary.failed += 1
        self.summary.failed_keys.append((row["participant_id"], row["item_index"]))
        self.bar.update()

    def count_answer(self, reply: TeacherReply) -> None:
        """Counts items in a row without an answer (any answer resets the count) and stops the run,
        raising :class:`EndpointUnreachable`, when there are ``max_consecutive_failures`` of them."""
        self.unreachable = self.unreachable + 1 if reply.unreachable else 0
        if not self.max_consecutive_failures or self.unreachable < self.max_consecutive_failures:
            return
        endpoint = getattr(self.teacher, "url", self.teacher.name)
        raise EndpointUnreachable(
            f"stopping: {self.unreachable} items in a row got no answer from {endpoint} (last: {reply.error}); "
            f"written in this run: {self.summary.written}, done before: {self.summary.skipped}, all kept in "
            f"{self.output}; rerun to resume once the endpoint answers",
            self.summary,
        )


__all__ = [
    "DEFAULT_MAX_CONSECUTIVE_FAILURES",
    "DEFAULT_SPLITS",
    "DEFAULT_TEACHER_PROMPT",
    "DistillSummary",
    "EndpointUnreachable",
    "LICENCE_NOTICE",
    "LocalTeacher",
    "OpenAICompatibleTeacher",
    "PROMPT_VERSION",
    "QUOTE_REQUEST",
    "RemoteEndpointRefused",
    "ReplyFormatError",
    "RequestDeadlineExceeded",
    "TEACHER_INSTRUCTION",
    "TEACHER_PROMPTS",
    "Teacher",
    "TeacherPrompt",
    "TeacherReply",
    "build_messages",
    "check_endpoint_allowed",
    "deduplicate_output",
    "distill",
    "is_loopback_url",
    "output_lock",
    "output_lock_folder",
    "parse_reply",
    "remote_warning",
    "teacher_prompt",
    "validate_row",
]
