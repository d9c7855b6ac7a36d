"""A client's context as a server can observe it, and which instances may serve which sessions.

A server sees its client through its handshake (protocol version and capabilities), through the roots it
asks for and, under `server.cwdFromClient`, through the directory it runs in. Instances are shared, so an
instance serves only the sessions whose context it cannot tell apart from the one it was given:

- the handshake (and the cwd) is fixed when the instance is initialized: an instance serves only sessions
  of that handshake, and one of another handshake needs an instance initialized with its own;
- roots reach a server only when it asks (`roots/list`), and mcpmux answers from a context, never from
  another session. An instance that has not been given roots is *unbound*: it serves every session of its
  handshake, since nothing it knows tells them apart. Once the server is known to ask for roots, an unbound
  instance is *bound* to one context (handshake and roots) at its first use and serves that context only.

mcpmux asks each session for its roots itself (the session declared the capability), again after its
`notifications/roots/list_changed`, and keeps them in the session's context. Nothing here outlives the
core: a new stack knows nothing of the clients of the previous one.

The protocol era is part of the key (router/core/eras.py). A client of the stateless era (2026-07-28) has no
handshake: each of its requests carries its own capabilities, and it is asked for roots only through an
`input_required` result of the very request that needs them. A server cannot tell two such clients apart
on one connection, so every stateless session has the same context, and every stateless instance serves
every stateless session.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mcpmux import __version__, jsonrpc, stateless
from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core import profile
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.session import Session
from mcpmux.stateless import Era

ROOTS = "roots"
REFUSALS_KEPT = 64  # handshakes a backend refused, remembered so that no instance is opened for one again


class Several(enum.Enum):
    """Requests of several client contexts run on an instance: nobody's roots are its own."""

    SEVERAL = "several"


SEVERAL = Several.SEVERAL


@dataclass(frozen=True, slots=True)
class ClientContext:
    """The key of a context: equal contexts are served by the same instances.

    Every field but `roots` is fixed by a backend's initialize (its *handshake*); a field added here (the
    protocol era, say) joins the key, the handshake and the JSON at once.
    """

    protocol_version: str
    capabilities: str  # the client's capabilities, canonical JSON
    cwd: str | None = None  # the client's working directory, under cwdFromClient
    roots: tuple[str, ...] | None = None  # each root as canonical JSON, in the client's order; None: none given
    declared: frozenset[str] = field(default=frozenset(), compare=False)  # the capabilities' names
    era: Era = Era.HANDSHAKE
    env: tuple[tuple[str, str], ...] = ()  # the client's values of server.passEnv, by name (never shown)

    @classmethod
    def stateless(cls, cwd: str | None = None, env: Mapping[str, str] | None = None) -> ClientContext:
        """The one context of every client of the stateless era (in a directory, under cwdFromClient, with its
        variables, under passEnv)."""
        return cls(stateless.LATEST, canonical({}), cwd, era=Era.STATELESS, env=_variables(env))

    @classmethod
    def of(cls, params: JsonObject, cwd: str | None = None, env: Mapping[str, str] | None = None) -> ClientContext:
        """The handshake part of a context, from a client's initialize params."""
        capabilities = params.get("capabilities")
        capabilities = capabilities if isinstance(capabilities, dict) else {}
        return cls(str(params.get("protocolVersion") or ""), canonical(capabilities), cwd,
                   declared=frozenset(capabilities), env=_variables(env))

    def handshake(self) -> ClientContext:
        """What an instance initialized for this context was initialized with."""
        return self if self.roots is None else replace(self, roots=None)

    def with_roots(self, roots: Any) -> ClientContext:
        """This context with the roots a client answered (`None` if it gave none we could read)."""
        if not isinstance(roots, list):
            return replace(self, roots=None)
        return replace(self, roots=tuple(canonical(root) for root in roots))

    def supports(self, capability: str) -> bool:
        return capability in self.declared

    def roots_result(self) -> JsonObject | None:
        """The answer to an instance's `roots/list` in this context, or None if the client gave none."""
        if self.roots is None:
            return None
        return {"roots": [json.loads(root) for root in self.roots]}

    @property
    def label(self) -> str:
        """A short, stable name for status and logs."""
        return hashlib.sha256(canonical(self.to_json()).encode()).hexdigest()[:6]

    def describe(self) -> str:
        return f"{self.label} {self.protocol_version or '(no version)'}"

    def initialize_params(self, client_info: Any) -> JsonObject:
        """The params to initialize a backend for this context with (clientInfo is required: mcpmux's own
        when no client of this context has said who it is)."""
        return {"protocolVersion": self.protocol_version, "capabilities": json.loads(self.capabilities),
                "clientInfo": client_info if client_info is not None else {"name": "mcpmux", "version": __version__}}

    def to_json(self) -> JsonObject:
        """The context as the core and a shim exchange it (never shown: it holds the variables' values)."""
        return {"protocolVersion": self.protocol_version, "capabilities": json.loads(self.capabilities),
                "cwd": self.cwd, "roots": None if self.roots is None else [json.loads(r) for r in self.roots],
                "era": self.era.value, "env": dict(self.env)}

    @classmethod
    def from_json(cls, data: Any) -> ClientContext | None:
        """A context a shim kept for its instance; None if it is not one (a shim of another version)."""
        if not isinstance(data, dict) or not isinstance(data.get("capabilities"), dict):
            return None
        cwd = data.get("cwd")
        env = data.get("env") if isinstance(data.get("env"), dict) else None
        if data.get("era") == Era.STATELESS.value:
            return cls.stateless(cwd if isinstance(cwd, str) else None, env)
        context = cls.of(data, cwd if isinstance(cwd, str) else None, env)
        return context.with_roots(data["roots"]) if data.get("roots") is not None else context

    @property
    def variables(self) -> tuple[str, ...]:
        """The names of the variables its clients pass (their values are never shown)."""
        return tuple(name for name, _ in self.env)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _variables(env: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """Variables as a context's key holds them: sorted by name, strings only (they came over a socket)."""
    if not env:
        return ()
    return tuple(sorted((name, value) for name, value in env.items() if isinstance(name, str)
                        and isinstance(value, str)))


class ContextRules:
    """The contexts the core has seen, and the rules that pair sessions with instances by context."""

    def __init__(self, *, cwd_from_client: bool = False, pass_env: Collection[str] = ()) -> None:
        self.cwd_from_client = cwd_from_client
        self.pass_env = frozenset(pass_env)
        # Whether the server asks for roots (some instance sent roots/list): from then on instances are bound
        # to one context at their first use.
        self.roots_observed = False
        self._client_info: dict[ClientContext, Any] = {}  # by handshake: the first client's clientInfo
        self._results: dict[ClientContext, JsonObject] = {}  # by handshake: a backend's InitializeResult
        self._refusals: dict[ClientContext, JsonObject] = {}  # by handshake: a backend's error to its initialize
        # What the first stateless client said of itself: a stateless instance's backend that refuses the era
        # is initialized as that client would then initialize it (router/core/eras.py).
        self._stateless_params: JsonObject = profile.WARM

    # --- sessions ------------------------------------------------------------------------------------

    def open(self, session: Session) -> None:
        """Give a session its context from its initialize params (its roots come later, when asked)."""
        params = session.initialize_params
        if params is None:
            return
        context = ClientContext.of(params, session.cwd if self.cwd_from_client else None, self._passed(session))
        session.context = context
        session.roots_known = not context.supports(ROOTS)
        self._client_info.setdefault(context, params.get("clientInfo"))

    def open_stateless(self, session: Session, request: Envelope) -> None:
        """Give a session of the stateless era the context every such session shares."""
        context = ClientContext.stateless(session.cwd if self.cwd_from_client else None, self._passed(session))
        session.context, session.roots_known = context, True
        meta = request.meta()
        if context not in self._client_info:
            # Kept to start instances for this context, in a frame: only what msgpack carries.
            client_info = meta.get(stateless.CLIENT_INFO_KEY)
            self._client_info[context] = client_info if jsonrpc.carried(client_info) else None
            capabilities = meta.get(stateless.CLIENT_CAPABILITIES_KEY)
            usable = isinstance(capabilities, dict) and jsonrpc.carried(capabilities)
            self._stateless_params = {**profile.WARM, "capabilities": capabilities if usable else {}}

    def _passed(self, session: Session) -> dict[str, str]:
        """The session's values of the variables the stack passes, and no others."""
        return {name: value for name, value in (session.env or {}).items() if name in self.pass_env}

    def roots_answered(self, session: Session, response: Envelope) -> None:
        """The client answered mcpmux's `roots/list`: its context now has those roots."""
        if session.context is None:
            return
        result = response.result()
        roots = result.get("roots") if isinstance(result, dict) else None
        if not jsonrpc.carried(roots):  # the core tells a bound instance's shim its context in a frame
            roots = None
        session.context = session.context.with_roots(roots)
        session.roots_known = True

    def roots_changed(self, session: Session) -> None:
        """The client's roots changed (its list_changed): unknown until it answers again."""
        if session.context is not None and session.context.supports(ROOTS):
            session.context = session.context.with_roots(None)
            session.roots_known = False

    @property
    def seen(self) -> bool:
        """Whether any client has said who it is (initialize)."""
        return bool(self._client_info)

    @property
    def first_handshake(self) -> ClientContext | None:
        """The handshake of the first client this core saw."""
        return next(iter(self._client_info), None)

    def initialize_params(self, handshake: ClientContext) -> JsonObject:
        """What an instance of this context is opened with: its initialize params, or for the stateless era
        the client's capabilities and identity of its discover's `_meta` (and of the handshake it falls back
        to if its backend refuses the era)."""
        client_info = self._client_info.get(handshake)
        if handshake.era is Era.STATELESS:
            return {**self._stateless_params, "clientInfo": client_info or self._stateless_params["clientInfo"]}
        return handshake.initialize_params(client_info)

    def as_opened(self, context: ClientContext, era: Era) -> ClientContext:
        """The context of an instance opened for `context` in `era`: a stateless one whose backend refused
        the era is of the handshake it fell back to."""
        if context.era is era:
            return context
        params = self.initialize_params(context)
        fallen = ClientContext.of(params, context.cwd, dict(context.env))
        self._client_info.setdefault(fallen, params.get("clientInfo"))
        return fallen

    # --- instances -----------------------------------------------------------------------------------

    def learned(self, instance: Instance) -> None:
        """An instance finished its handshake: its result answers the initialize of its handshake's clients."""
        if instance.context is not None and instance.initialize_result is not None:
            self._results[instance.context.handshake()] = instance.initialize_result

    def initialize_result(self, session: Session) -> JsonObject | None:
        """The InitializeResult a backend of this session's handshake gave, if one has been seen."""
        return None if session.context is None else self._results.get(session.context.handshake())

    def refuse(self, handshake: ClientContext, error: JsonObject) -> bool:
        """A backend answered this handshake's initialize with an error: a verdict on its params (a version
        or capabilities the server rejects), not a fault of the instance. Its clients get that error, and no
        instance is opened for it again. False if a backend once took it (then the instance is at fault)."""
        if handshake in self._results:
            return False
        self._refusals[handshake] = error
        while len(self._refusals) > REFUSALS_KEPT:
            del self._refusals[next(iter(self._refusals))]
        self._client_info.pop(handshake, None)  # nor is it the first client's, whose instances warm up
        return True

    def refusal(self, session: Session) -> JsonObject | None:
        """The error a backend gave this session's handshake, if it refused it."""
        return None if session.context is None else self.refusal_of(session.context)

    def refusal_of(self, context: ClientContext) -> JsonObject | None:
        return self._refusals.get(context.handshake())

    @staticmethod
    def forget(session: Session) -> None:
        """The session's initialize was refused: it has no context, and may initialize again."""
        session.context, session.initialize_params, session.roots_known = None, None, False

    def needs_binding(self, instance: Instance) -> bool:
        """Whether the instance must be bound to one context before it serves (it is known to ask roots)."""
        context = instance.context
        return (not instance.bound and context is not None and context.supports(ROOTS)
                and (self.roots_observed or instance.roots_request is not None))

    def may_ask_roots(self, instance: Instance) -> bool:
        """Whether the server may ask this instance's client for roots (it was initialized with them)."""
        return not instance.bound and instance.context is not None and instance.context.supports(ROOTS)

    def bind(self, instance: Instance, context: ClientContext) -> None:
        instance.context, instance.bound = context, True

    # --- the rules -----------------------------------------------------------------------------------

    def serves(self, instance: Instance, session: Session) -> bool:
        """Whether the instance may ever serve this session: nothing the server can observe differs."""
        ours, theirs = instance.context, session.context
        if ours is None or theirs is None:
            return False
        if instance.bound:
            return session.roots_known and (ours is theirs or ours == theirs)
        handshake = theirs.handshake()
        return ours is handshake or ours == handshake  # usually the very object: no field-by-field compare

    def usable(self, instance: Instance, session: Session) -> bool:
        """Whether the instance may serve the session now (readiness and load aside): an instance to be
        bound can only be bound to a context whose roots are known."""
        return (not instance.settling and self.serves(instance, session)
                and (session.roots_known or not self.needs_binding(instance)))

    def needs_instance(self, session: Session, instances: list[Instance]) -> bool:
        """Whether no instance, ready or starting, can ever serve this session: one must be started for its
        context (its roots known, or not needed)."""
        if session.context is None or (not session.roots_known and self.roots_observed):
            return False  # nothing to start before the client gives its roots
        return not any(self.serves(instance, session) for instance in instances)

    def unmet(self, sessions: list[Session], initializing: list[Session],
              instances: list[Instance]) -> list[ClientContext]:
        """The handshakes to start instances with: those of sessions whose initialize waits for a backend
        of their handshake, or whose requests wait and no instance can ever serve."""
        wanted = {session.context.handshake() for session in initializing
                  if session.context is not None and self.needs_handshake(session, instances)}
        for session in sessions:
            waiting = any(pending.waiting for pending in session.pending.values())
            if session.context is not None and waiting and self.needs_instance(session, instances):
                wanted.add(session.context.handshake())
        return sorted(wanted, key=lambda context: context.label)

    def busiest(self, sessions: list[Session]) -> ClientContext | None:
        """The handshake of the most requests running or waiting: what a pool growing for load starts."""
        counts = Counter(session.context.handshake() for session in sessions if session.context is not None
                         for _ in session.pending)
        return counts.most_common(1)[0][0] if counts else None

    def unplaced(self, sessions: list[Session], available: list[ClientContext | None]) -> list[ClientContext]:
        """Under dedicated: the handshakes of `sessions` (each needing an instance of its own) that the
        `available` instances' contexts (free or starting) do not cover, one per instance to provide."""
        wants = Counter(session.context.handshake() for session in sessions if session.context is not None)
        have = Counter(context.handshake() for context in available if context is not None)
        return sorted((wants - have).elements(), key=lambda context: context.label)

    def roots_owner(self, running: list[Session]) -> Session | Several | None:
        """Whom an unbound instance's roots/list is for, from the sessions whose requests it runs: the one
        context they share (once its roots are known), SEVERAL if they differ, None to wait (idle: it is
        bound at its first use)."""
        if not running or not all(session.roots_known for session in running):
            return None
        if len({session.context for session in running}) > 1:
            return SEVERAL
        return running[0]

    def roots_answer(self, instance: Instance, backend_id: Any) -> JsonObject:
        """The answer to an instance's roots/list: its bound context's roots, never another's."""
        if not instance.bound:
            return jsonrpc.error(backend_id, jsonrpc.UNATTRIBUTABLE, "mcpmux cannot tell whose roots these "
                                 "are: requests of several client contexts run on this instance")
        roots = instance.context.roots_result() if instance.context is not None else None
        if roots is None:
            return jsonrpc.error(backend_id, jsonrpc.INTERNAL_ERROR, "the client gave no roots")
        return jsonrpc.result(backend_id, roots)

    def needs_handshake(self, session: Session, instances: list[Instance]) -> bool:
        """Whether no instance, ready or starting, was initialized as this session would initialize it (its
        initialize waits for one)."""
        if session.context is None:
            return False
        handshake = session.context.handshake()
        return not any(instance.context is not None and instance.context.handshake() == handshake
                       for instance in instances)

    def why_waiting(self, session: Session, instances: list[Instance], max_instances: int, *,
                    initializing: bool = False) -> tuple[int, str] | None:
        """The error for a request that waited until its deadline because of its client's context: the
        code and the reason, or None if its context was not the reason."""
        context = session.context
        if context is None:
            return None
        if not initializing and not session.roots_known and self.roots_observed:
            return (jsonrpc.REQUEST_TIMEOUT,
                    "waiting for the client's roots (mcpmux asked it for roots/list and got no answer)")
        unmet = (self.needs_handshake if initializing else self.needs_instance)(session, instances)
        if not unmet or len(instances) < max_instances:
            return None
        return (jsonrpc.NO_INSTANCE,
                f"no instance runs this client's context ({context.describe()}) and none can be started: "
                f"the pool is at maxInstances ({max_instances}) and every instance is busy serving other "
                "clients' contexts")


def refused_answer(request_id: Any, error: JsonObject) -> JsonObject:
    """A backend's error to an initialize, under a client's id (its code and message as they came, if usable)."""
    code, message = error.get("code"), error.get("message")
    return jsonrpc.error(request_id, code if type(code) is int else jsonrpc.INTERNAL_ERROR,
                         message if isinstance(message, str) else "the MCP server refused initialize",
                         error.get("data"))
