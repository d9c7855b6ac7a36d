"""Roots, and the binding of instances to one client context.

A client's roots are asked of it once it is initialized (and again when it says they changed); an instance
that asks for roots is answered from its own context's, never another's. An instance is bound to a context
at its first use, or as soon as what it runs says whose it is; one given roots serves nothing until its
server has applied them (it *settles*: router/core/settling.py says when that is, this module carries it out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope
from mcpmux.router.core.actions import InstanceBound
from mcpmux.router.core.contexts import ROOTS, SEVERAL, ContextRules
from mcpmux.router.core.dedicated import Dedicated
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.outbox import Outbox
from mcpmux.router.core.requests import Requests
from mcpmux.router.core.session import Session
from mcpmux.router.core.settling import Check, Settling, Verdict

log = logging.getLogger("mcpmux.core")

Clock = Callable[[], float]


class Binding:
    def __init__(self, contexts: ContextRules, pool: Pool, requests: Requests, dedicated: Dedicated,
                 settling: Settling, outbox: Outbox, metrics: Metrics, clock: Clock) -> None:
        self._contexts = contexts
        self._pool = pool
        self._requests = requests
        self._dedicated = dedicated
        self.settling = settling
        self._outbox = outbox
        self._metrics = metrics
        self._now = clock

    # --- the client's side -------------------------------------------------------------------------------

    def ask_roots(self, session: Session) -> None:
        """Ask the client for its roots (it declared the capability): instances' roots/list are answered
        from them."""
        if session.context is None or not session.context.supports(ROOTS):
            return
        session.roots_ask = self._outbox.next_id()
        self._outbox.to_client(session, {"jsonrpc": "2.0", "id": session.roots_ask, "method": "roots/list"})

    def roots_answered(self, session: Session, message: Envelope) -> None:
        """The client's roots came: its session moves to their context (and its own instance with it)."""
        session.roots_ask = None
        self._contexts.roots_answered(session, message)
        self._follow_roots(session)

    def give_asked_roots(self) -> None:
        """Answer the instances that asked for roots, those whose owners are known by now."""
        for instance in self._pool:
            if instance.roots_request is not None:
                self.give_roots(instance)

    def _follow_roots(self, session: Session) -> None:
        """Under dedicated, a session's own instance is its alone and holds its state: it follows the
        session's new roots (bound to them, and told they changed, as a server with one client is) rather
        than the session moving elsewhere and its instance being recycled."""
        instance = self._pool.get(self._dedicated.slot_of(session.identity) or "")
        if instance is None or not instance.bound or session.context in (None, instance.context):
            return
        self._bind_to(instance, session)
        self._outbox.to_instance(instance, jsonrpc.notification("notifications/roots/list_changed"))
        self._settle(instance, changed=True)

    # --- the instance's side -----------------------------------------------------------------------------

    def roots_request(self, instance: Instance, message: Envelope) -> None:
        """An instance asks for roots: answered from its context, never from another's."""
        if instance.context is None or not instance.context.supports(ROOTS):
            self._outbox.to_instance(instance, jsonrpc.error(message.id, jsonrpc.METHOD_NOT_FOUND,
                                                             "the client does not support roots"))
            return
        self._contexts.roots_observed = True  # from now on, instances are bound to one context at first use
        instance.roots_request = message.id
        self.give_roots(instance)

    def give_roots(self, instance: Instance) -> None:
        """Answer an instance's roots/list once it is bound. An unbound one is bound now if every request it
        runs is of one context whose roots are known; an idle one at its first use."""
        if not instance.bound:
            owner = self._contexts.roots_owner([p.session for p in self._requests.running_on(instance.slot)])
            if owner is None:
                return  # bound at its first use, or once its client's roots are known
            if owner is not SEVERAL:
                self._bind_to(instance, owner)
        backend_id, instance.roots_request = instance.roots_request, None
        self._outbox.to_instance(instance, self._contexts.roots_answer(instance, backend_id))
        if self.settling.roots_given(instance.slot):  # a roots change's settle starts once they are in
            self._check_settled(instance)

    def bind(self, instance: Instance, session: Session) -> bool:
        """Bind an instance to a session's context at its first use; True if it must settle first: it
        asked for roots, which it gets now, and serves once it has applied them (so its first request finds
        them in place)."""
        self._bind_to(instance, session)
        if instance.roots_request is None:
            return False
        self.give_roots(instance)
        self._settle(instance)
        return True

    def _bind_to(self, instance: Instance, session: Session) -> None:
        assert session.context is not None
        self._contexts.bind(instance, session.context)
        self._outbox.act(InstanceBound(instance.slot, session.context))

    def instance_lost(self, instance: Instance) -> None:
        instance.roots_request = None
        self.settling.forget(instance.slot)

    # --- settling: serving nothing until the roots given are applied --------------------------------------

    def no_tools(self, instance: Instance) -> None:
        """The instance offers no tools, or would not list them: its settles check with a ping."""
        self.settling.no_tools(instance.slot)
        self._check_settled(instance)

    def tools_listed(self, instance: Instance, tools: object, *, last_page: bool) -> None:
        """A page of the instance's tools: whether it has the probe tool."""
        self.settling.tools_listed(instance.slot, tools, last_page=last_page)
        self._check_settled(instance)

    def next_due(self) -> float | None:
        return self.settling.next_due()

    def expire_due(self) -> None:
        """Checks whose back-off has passed go out again; settles that took too long are given up."""
        again, expired = self.settling.due(self._now())
        for instance in filter(None, map(self._pool.get, again)):
            self._check_settled(instance)
        for instance in filter(None, map(self._pool.get, expired)):
            self._give_up(instance)

    def _settle(self, instance: Instance, *, changed: bool = False) -> None:
        """Serve nothing until the server has applied the roots it was given (or, `changed`, is about to
        ask for)."""
        instance.settling = True
        roots = instance.context.roots if instance.context is not None else None
        self.settling.begin(instance.slot, roots, self._now(), changed=changed)
        self._check_settled(instance)

    def _check_settled(self, instance: Instance) -> None:
        """Send the settle's check (the probe, or a ping) if it is due: router/core/settling.py says when."""
        check = self.settling.step(instance.slot)
        if check is None:
            return  # it waits for the server's roots/list, its tools, an answer, or its back-off
        method, params, then = (("tools/call", self.settling.call(instance.slot), self._probed)
                                if check is Check.PROBE else ("ping", {}, self._settled))
        if self._outbox.ask(instance.slot, method, params, then) is None:
            self._settled(instance)
            return
        self.settling.probe_sent(instance.slot)

    def _probed(self, instance: Instance, message: Envelope) -> None:
        verdict = self.settling.judge(instance.slot, message, self._now())
        if verdict is Verdict.APPLIED:
            self._settled(instance, message)
        elif verdict is Verdict.GAVE_UP:
            self._give_up(instance)

    def _give_up(self, instance: Instance) -> None:
        text = self.settling.given_up(instance.slot)
        log.warning("%s", text)
        self._metrics.event("warning", text, slot=instance.slot)
        self._settled(instance)

    def _settled(self, instance: Instance, answer: Envelope | None = None) -> None:
        self.settling.done(instance.slot)
        instance.settling = False
