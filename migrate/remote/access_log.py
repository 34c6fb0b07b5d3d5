"""Per-call observation at the gRPC boundary: one access log line and the metrics of every call.

``CallObserver`` is the daemon's outermost server interceptor, so it also sees calls the token
check refuses. For each call it writes one line on the ``pymigrate.access`` logger (INFO; health
checks at DEBUG, load balancers poll them) with the fields ``peer`` (who: the TLS client
certificate's CN, else its first SAN; ``unix:uid=N`` on the unix socket; the address for plain
TCP), ``addr`` (gRPC's peer address), ``method``, ``code``, ``ms`` and, when the daemon has named
tokens (migrate/remote/tokens.py), ``token``: the name of the one the call carried (``-``: none
of them; never the token itself); and, with metrics, it counts
the call by method and code and times it (migrate/remote/metrics.py). Streaming calls are
observed when they end; a stream its client abandoned ends as CANCELLED.

It also observes what the handlers answer, so the library stays free of metrics: a Migrate's
mode (from the request, or the result's when it succeeded), outcome, pause, total time and bytes
on the wire, the outcome of Checkpoint and Restore, and the chunk bytes pushed to this host.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import grpc

from migrate.remote.service import replace_behavior
from migrate.remote.tokens import SINGLE

if TYPE_CHECKING:  # prometheus_client is imported only by a daemon that serves metrics
    from migrate.remote.metrics import DaemonMetrics

access_log = logging.getLogger("pymigrate.access")

HOST_SERVICE = "/pymigrate.v1.Host/"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
PUSH_METHODS = frozenset({"PushImage", "PushUpper", "PushCheckpoint"})  # chunks sent to this host
MODE_PREFIX = "MIGRATION_MODE_"


def outcome_of(code: str) -> str:
    if code == "OK":
        return "succeeded"
    return "cancelled" if code in ("CANCELLED", "DEADLINE_EXCEEDED") else "failed"


def peer_identity(context: grpc.ServicerContext) -> str:
    """Who called: the verified client certificate's CN (or first SAN), else the transport's view."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # fakes and some transports have none
        auth = {}
    for key, label in (("x509_common_name", "cn"), ("x509_subject_alternative_name", "san")):
        values = auth.get(key) or []
        if values:
            value = values[0]
            return f"{label}:{value.decode(errors='replace') if isinstance(value, bytes) else value}"
    peer = context.peer() or "unknown"
    if peer.startswith("unix:"):
        # gRPC Python does not expose SO_PEERCRED; the socket is 0600 and owned by the daemon's
        # uid (migrate/remote/server.py), so a caller is that uid (or root, which passes any mode).
        return f"unix:uid={os.geteuid()}"
    return peer


class _Call:
    """One call being observed; ``finish`` reports it once (the end of the handler, or the RPC's
    termination callback when the client went away first)."""

    def __init__(self, observer: "CallObserver", method: str, context: grpc.ServicerContext, request: Any) -> None:
        self.observer = observer
        self.method = method
        self.context = context
        self.request = request
        self.started = time.monotonic()
        self.result: Any = None
        self.received_bytes = 0
        self._done = False
        self._lock = threading.Lock()

    def answered(self, response: Any) -> None:
        if self.method.endswith("/Migrate") and _has(response, "result"):
            self.result = response.result

    def counted(self, requests: Iterator[Any]) -> Iterator[Any]:
        for request in requests:
            data = getattr(request, "data", b"")
            if isinstance(data, bytes):
                self.received_bytes += len(data)
            yield request

    def code_now(self, failed: bool) -> str:
        code = _context_code(self.context)
        if code is not None:
            return code.name
        if failed:
            return "UNKNOWN"
        # a handler that returned quietly because its caller had gone (service.py does so for a
        # cancelled stream) did not succeed
        return "OK" if _is_active(self.context) else "CANCELLED"

    def finish(self, code: str) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self.observer.report(self, code, time.monotonic() - self.started)


def token_name(tokens: Mapping[str, str], context: grpc.ServicerContext) -> str:
    """The name of the bearer token a call carried, ``-`` when it carried none of ``tokens``."""
    from migrate.remote.tokens import name_of

    try:
        metadata = context.invocation_metadata() or ()
    except Exception:  # noqa: BLE001 - fakes have none
        metadata = ()
    presented = next((value for key, value in metadata if key == "authorization"), None)
    return name_of(tokens, presented) or "-"


def _has(message: Any, field: str) -> bool:
    try:
        return bool(message.HasField(field))
    except (AttributeError, ValueError):
        return False


def _is_active(context: grpc.ServicerContext) -> bool:
    try:
        return bool(context.is_active())
    except Exception:  # fakes without it
        return True


def _context_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()  # set by abort() / set_code()
    except Exception:  # fakes without it
        return None
    return code if isinstance(code, grpc.StatusCode) else None


class CallObserver(grpc.ServerInterceptor):
    """Access log and metrics for every call (see the module doc); ``metrics`` None: log only."""

    def __init__(self, metrics: DaemonMetrics | None = None, *, logger: logging.Logger = access_log,
                 tokens: Mapping[str, str] | None = None) -> None:
        self.metrics = metrics
        self.log = logger
        self.tokens = tokens  # name -> token: the log names the caller's (a file's lone unnamed token: no name)

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED; not a label to count
        method = handler_call_details.method
        return replace_behavior(handler, lambda behavior, streaming: self._wrap(behavior, streaming, method, handler.request_streaming))

    def _wrap(self, behavior: Callable[..., Any], streaming_response: bool, method: str, streaming_request: bool) -> Callable[..., Any]:
        def start(request_or_iterator: Any, context: grpc.ServicerContext) -> tuple[_Call, Any]:
            call = _Call(self, method, context, None if streaming_request else request_or_iterator)
            # the RPC ended before the handler did (client cancelled, deadline): report it now
            context.add_callback(lambda: call.finish("CANCELLED"))  # a no-op when the handler finished first
            if streaming_request and method.rpartition("/")[2] in PUSH_METHODS:
                request_or_iterator = call.counted(request_or_iterator)
            return call, request_or_iterator

        if streaming_response:

            def stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call, request_or_iterator = start(request_or_iterator, context)
                failed = False
                try:
                    for response in behavior(request_or_iterator, context):
                        call.answered(response)
                        yield response
                except GeneratorExit:
                    call.finish("CANCELLED")
                    raise
                except BaseException:
                    failed = True
                    raise
                finally:
                    call.finish(call.code_now(failed))

            return stream

        def unary(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            call, request_or_iterator = start(request_or_iterator, context)
            failed = False
            try:
                return behavior(request_or_iterator, context)
            except BaseException:
                failed = True
                raise
            finally:
                call.finish(call.code_now(failed))

        return unary

    def report(self, call: _Call, code: str, seconds: float) -> None:
        peer = peer_identity(call.context)
        fields = {"peer": peer, "addr": call.context.peer(), "method": call.method, "code": code, "ms": round(seconds * 1000, 1)}
        who = peer
        if self.tokens and list(self.tokens) != [SINGLE]:
            fields["token"] = token_name(self.tokens, call.context)
            who = f"{peer} token={fields['token']}"
        level = logging.DEBUG if call.method.startswith(HEALTH_PREFIX) else logging.INFO
        self.log.log(level, "%s %s %s %.1fms", who, call.method, code, fields["ms"], extra=fields)
        if self.metrics is None:
            return
        self.metrics.rpc(call.method, code, seconds)
        if call.method.startswith(HOST_SERVICE):
            self._observe(call, call.method[len(HOST_SERVICE):], code)

    def _observe(self, call: _Call, name: str, code: str) -> None:
        metrics = self.metrics
        assert metrics is not None
        if name == "Migrate":
            mode = _mode_name(getattr(call.request, "mode", 0))
            result = call.result
            if result is not None and code == "OK":
                stats = result.stats
                metrics.migration(_mode_name(result.mode) or mode, "succeeded", pause_s=stats.frozen_ms / 1000.0,
                                  total_s=stats.total_ms / 1000.0, bytes_sent=stats.bytes_on_wire)
            else:
                metrics.migration(mode, outcome_of(code))
        elif name == "Checkpoint":
            metrics.checkpoints.labels(outcome_of(code)).inc()
        elif name == "Restore":
            metrics.restores.labels(outcome_of(code)).inc()
        elif name in PUSH_METHODS:
            metrics.received(call.received_bytes)


def _mode_name(value: int) -> str:
    """The proto enum's value as the CLI names it (UNSPECIFIED is cold, as the API says)."""
    from migrate._proto.pymigrate.v1 import host_pb2 as pb

    try:
        name = pb.MigrationMode.Name(int(value))
    except (ValueError, TypeError):
        return "cold"
    name = name[len(MODE_PREFIX):].lower() if name.startswith(MODE_PREFIX) else name.lower()
    return "cold" if name == "unspecified" else name
