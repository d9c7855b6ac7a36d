"""Who hears what an instance says: the sessions each of its notifications, and the one each of its
requests, belongs to.

An instance serves many sessions and its server does not say for whom it speaks, so each kind of message
is delivered by the most exact rule that applies:

- a frame of a `subscriptions/listen` stream: the stream's session (by the id mcpmux gave the stream);
- progress: the session whose request gave the token, if that request runs on this instance; a task's
  progress, the task's session; a token nobody gave, nobody;
- `notifications/tasks/status`: the task's session only; an elicitation's completion: the session asked;
- `resources/updated`: the sessions subscribed to that uri on this instance;
- `notifications/cancelled` of a request the server sent a client: that client's session, under its id;
- `*/list_changed`: every session of the instance's context, once until it lists again (every instance
  of a context announces the same change), and a session that initializes later hears what was announced;
- a log message, and anything else: the session whose request or task it names or that alone uses the
  instance; else, when sessions share instances, the sessions of its context (logs only to those that
  asked for that level); under dedicated, nobody.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope, Flag
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core import elicitations, listen, rewrite, server_requests
from mcpmux.router.core.contexts import ContextRules
from mcpmux.router.core.eligibility import Eligibility
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.running import Running
from mcpmux.router.core.session import Session
from mcpmux.router.core.subscriptions import Subscriptions
from mcpmux.router.core.tasks import TaskTable

log = logging.getLogger("mcpmux.core")

Delivery = tuple[Session, Envelope | JsonObject]  # a session, and the message as its client gets it


class Audience:
    def __init__(self, sessions: Mapping[bytes, Session], pool: Pool, running: Running, tasks: TaskTable,
                 asked: elicitations.Elicitations, subscriptions: Subscriptions, eligibility: Eligibility,
                 contexts: ContextRules) -> None:
        self._sessions = sessions
        self._pool = pool
        self._running = running
        self._tasks = tasks
        self._asked = asked
        self._subscriptions = subscriptions
        self._eligibility = eligibility
        self._contexts = contexts

    def of_notification(self, instance: Instance, message: Envelope) -> list[Delivery]:
        """Where an instance's notification goes, and as what."""
        if message.flags & Flag.SUBSCRIPTION:  # a frame of a listen stream, tagged with our request id
            stream = self._running.get(message.token)
            if stream is None or stream.slot != instance.slot:
                return []
            return [(stream.session, frame) for frame in listen.to_client(stream, message)]
        method = message.method or ""
        params = message.params()
        if method == "notifications/progress":
            return self._progress(instance, params, message)
        if method.endswith("/list_changed"):
            instance.announced.add(method)
            return [delivery for session in self.served_by(instance) if session.hears_notifications
                    for delivery in _once(session, method, message)]
        if method == "notifications/resources/updated":
            listeners = self._subscriptions.listeners(params.get("uri"), instance.slot)
            return [(session, message) for session in map(self._sessions.get, listeners) if session is not None]
        if method == "notifications/cancelled":
            return self._server_cancelled(instance, params)
        if method == "notifications/message":
            return [(session, message) for session in self._log_readers(instance, params, message)]
        if method == "notifications/tasks/status":
            task = self._tasks.observe(instance.slot, params)
            owner = self._sessions.get(task.session) if task is not None else None
            return [(owner, message)] if owner is not None else []  # never anyone else, even for unknown tasks
        if method == elicitations.COMPLETE:
            owner = self._sessions.get(self._asked.completed(instance.slot, message) or b"")
            return [(owner, message)] if owner is not None else []  # an unknown id reaches nobody
        owner = self.owner(instance, message, guess_when_idle=False)
        audience = [owner] if owner is not None else self._unattributed(instance)
        return [(session, message) for session in audience if session.hears_notifications]

    def replayed(self, session: Session) -> list[Delivery]:
        """What a session that just initialized missed: the list changes the instances of its handshake
        announced (a server that registers tools after each initialized says so to each of its clients)."""
        handshake = session.context.handshake() if session.context is not None else None
        announced = {method for instance in self._pool if instance.context is not None
                     and instance.context.handshake() == handshake for method in instance.announced}
        return [delivery for method in sorted(announced)
                for delivery in _once(session, method, jsonrpc.notification(method))]

    def owner(self, instance: Instance, message: Envelope, *, guess_when_idle: bool = True) -> Session | None:
        """The session a message of the instance belongs to: the task's it names in its related-task
        `_meta` (exact), else the one using the instance (server_requests.attribute: a guess at best)."""
        task = self._tasks.owner(instance.slot, message)
        owner = self._sessions.get(task.session) if task is not None else None
        if owner is not None:
            return owner
        # Under dedicated the instance's own session, whatever its context does meanwhile (its roots asked
        # again); otherwise only a session the instance serves (one of its context) can be the one.
        assigned = self._eligibility.assignment()
        candidates = (dict(self._sessions) if assigned is not None
                      else {session.identity: session for session in self.served_by(instance)})
        return server_requests.attribute(instance.slot, self._running.sessions_on(instance.slot), candidates,
                                         guess_when_idle=guess_when_idle, assigned=assigned)

    def served_by(self, instance: Instance) -> list[Session]:
        return [session for session in self._sessions.values() if self._contexts.serves(instance, session)]

    def _progress(self, instance: Instance, params: JsonObject, message: Envelope) -> list[Delivery]:
        pending = self._running.get(params.get("progressToken"))
        if pending is not None and (pending.slot != instance.slot or not pending.message.flags & Flag.PROGRESS):
            log.info("%s sent progress for a token its client never gave; dropped", instance.slot)
            return []
        if pending is not None:
            token = rewrite.client_progress_token(pending.message)
            return [(pending.session, rewrite.with_progress_token(message, token))]
        # A task's progress keeps its request's token after the request was answered.
        target = self._tasks.progress_target(instance.slot, params.get("progressToken"))
        session = self._sessions.get(target[0]) if target is not None else None
        if target is None or session is None:
            return []
        return [(session, rewrite.with_progress_token(message, target[1]))]

    def _server_cancelled(self, instance: Instance, params: JsonObject) -> list[Delivery]:
        for session in self._sessions.values():
            for client_id, request in list(session.server_requests.items()):
                if request.slot == instance.slot and request.backend_id == params.get("requestId"):
                    del session.server_requests[client_id]
                    return [(session, jsonrpc.notification("notifications/cancelled",
                                                           {**params, "requestId": client_id}))]
        return []

    def _log_readers(self, instance: Instance, params: JsonObject, message: Envelope) -> list[Session]:
        """The session the log message was produced for, when one is sure; otherwise only the sessions of
        the instance's context that asked for logs (logging/setLevel) at a level admitting it."""
        level = str(params.get("level"))
        owner = self.owner(instance, message, guess_when_idle=False)
        if owner is not None:
            return [owner] if owner.wants_log(level) else []
        return [session for session in self._unattributed(instance) if session.admits_log(level)]

    def _unattributed(self, instance: Instance) -> list[Session]:
        """Who hears a message that belongs to no one session: when sessions share instances, the sessions
        of its context (an instance speaks only to those it may serve); under dedicated nobody, since an
        instance with no session serves no one."""
        return self.served_by(instance) if self._eligibility.shares_instances else []


def _once(session: Session, method: str, message: Envelope | JsonObject) -> list[Delivery]:
    """A list change reaches a session once, until it lists again (router/core/session.py)."""
    if method in session.list_changed_sent:
        return []
    session.list_changed_sent.add(method)
    return [(session, message)]
