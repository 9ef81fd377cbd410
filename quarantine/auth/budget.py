"""What verifying one message may cost: CPU time, DNS queries and DNS time,
counted across DKIM, DomainKeys, ARC and DMARC (SPF keeps RFC 7208's own
limits). Running out is `Exhausted`, a temporary condition: the results not
yet had become `temperror`, never a permanent verdict.

The CPU bound is a profiling timer (SIGPROF, process CPU time) whose handler
raises `Exhausted` at the next Python instruction, so no input, however
built, keeps the verifier busy past it. `Exhausted` is a BaseException: a
library's `except Exception` cannot swallow it, and while the budget is spent
the timer keeps firing, so a bare `except:` cannot either.
"""

from __future__ import annotations

import time

# The C module under `signal`: the same calls without `signal`'s enum
# conversions of every constant (several ms a start on the mail path).
_signal = __import__("_signal")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType, TracebackType

CPU_SECONDS = 1.5  # verification's share of the about 2 s a message may cost
MAX_QUERIES = 50  # DNS lookups per message (DKIM, DomainKeys, ARC, DMARC)
DNS_SECONDS = 20.0  # time spent waiting for DNS per message (RFC 7208 §4.6.4's figure)
REFIRE = 0.05  # once spent, the timer fires again this often (CPU seconds)


class Exhausted(BaseException):
    """The message's budget is spent; `reason` says which part."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Budget:
    """One message's allowance. Use as a context manager to arm the CPU
    timer (only in the main thread, where signals are delivered); `charge`
    before each DNS lookup."""

    def __init__(
        self,
        cpu: float = CPU_SECONDS,
        queries: int = MAX_QUERIES,
        dns_seconds: float = DNS_SECONDS,
    ) -> None:
        self.cpu = cpu
        self.max_queries = queries
        self.dns_seconds = dns_seconds
        self.queries = 0
        self.spent: str | None = None  # why the budget ran out, once it has
        self._dns_deadline: float | None = None
        self._armed = False  # the timer's signal raises Exhausted
        self._installed = False  # our SIGPROF handler is in place
        self._previous: object = None

    # -- CPU --------------------------------------------------------------

    def __enter__(self) -> Budget:
        if self.cpu > 0:
            try:
                self._previous = _signal.signal(_signal.SIGPROF, self._on_timer)
            except ValueError:
                return self  # not the main thread: signals are not delivered here
            self._installed = True
            self._armed = True
            _signal.setitimer(_signal.ITIMER_PROF, self.cpu, REFIRE)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disarm()

    def disarm(self) -> None:
        """Stop the timer and put the previous SIGPROF handler back (again
        and again if need be: a caller may call it after `__exit__`)."""
        self._armed = False  # first: a late signal now only records
        if self._installed:
            _signal.setitimer(_signal.ITIMER_PROF, 0, 0)
            _signal.signal(_signal.SIGPROF, self._previous)
            self._installed = False

    def _on_timer(self, signum: int, frame: FrameType | None) -> None:
        if self.spent is None:
            self.spent = f"CPU time ({self.cpu:g} s) spent"
        if self._armed:
            raise Exhausted(self.spent)

    def check(self) -> None:
        """Raise Exhausted if the budget has run out (a step that caught the
        timer's exception, or ran out of memory, left it so)."""
        if self.spent is not None:
            raise Exhausted(self.spent)

    def out_of_memory(self) -> Exhausted:
        """A MemoryError, as a spent budget."""
        self.spent = self.spent or "out of memory"
        return Exhausted(self.spent)

    # -- DNS --------------------------------------------------------------

    def charge(self, timeout: float) -> float:
        """Count one DNS lookup; the time it may take (at most `timeout`).
        Exhausted once MAX_QUERIES lookups are done or DNS_SECONDS have passed
        since the first."""
        self.check()
        now = time.monotonic()
        if self._dns_deadline is None:
            self._dns_deadline = now + self.dns_seconds
        if self.queries >= self.max_queries:
            self.spent = f"DNS query budget ({self.max_queries}) spent"
            raise Exhausted(self.spent)
        left = self._dns_deadline - now
        if left <= 0:
            self.spent = f"DNS time ({self.dns_seconds:g} s) spent"
            raise Exhausted(self.spent)
        self.queries += 1
        return min(timeout, left)
