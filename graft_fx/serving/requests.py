"""What flows through the serving half: one request for one fragment type, with its deadline.

A *fragment type* is (model, cut): every request of one type runs the same tail on the server.
Times are seconds on whatever clock the simulator or the runtime uses; the request only needs
them to be comparable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Request:
    """A request reaching the server at ``arrival_s`` that must be answered by ``deadline_s``.

    Ordered by (deadline, arrival, id): the order earliest-deadline-first queues want.
    """

    deadline_s: float
    arrival_s: float
    id: int
    fragment: int  # index of the fragment type

    @property
    def budget_s(self) -> float:
        """The server's part of the SLO: time from arrival to deadline."""
        return self.deadline_s - self.arrival_s
