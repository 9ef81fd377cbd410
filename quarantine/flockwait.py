"""An flock waited for at most a given time: a lock another process holds
forever costs the caller that wait and an OSError, never a hang. Imports
only fcntl, time and errno (deliver takes it for the Junk log).
"""

import errno
import fcntl
import time

POLL = 0.05  # seconds between two tries


def flock_within(fd: int, seconds: float, *, shared: bool = False) -> None:
    """An exclusive (or `shared`) flock of `fd`, tried again every POLL
    seconds for at most `seconds`; BlockingIOError (EAGAIN) past that."""
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, operation)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BlockingIOError(
                    errno.EAGAIN, f"locked by another process for over {seconds:g} s"
                ) from None
        time.sleep(min(POLL, left))
