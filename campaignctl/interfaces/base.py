"""What every interface driver shares: deliveries, the retry policy, and the retry loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol


@dataclass(slots=True)
class Delivery:
    """One device's desired-configuration document, ready to send."""

    device_id: int
    device: str
    version: int
    payload: bytes  # {"version": ..., "configuration": {...}}
    attempts: int = 0
    loaded_at: int = 0  # the global revision when the document was read (see JobRecorder)


@dataclass(slots=True)
class Failure:
    delivery: Delivery
    error: str
    permanent: bool = False  # retrying cannot help (e.g. HTTP 404): fail at once


@dataclass
class DeliveryPolicy:
    attempts: int = 5  # tries per device, the first included
    timeout: float = 10.0  # seconds to connect, or to get one delivery acknowledged
    backoff: float = 1.0  # first wait between tries; doubles each time, with jitter
    max_backoff: float = 30.0
    window: int = 1000  # deliveries in flight at once, per interface

    def to_dict(self) -> dict[str, float | int]:
        return {
            "attempts": self.attempts,
            "timeout": self.timeout,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "window": self.window,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DeliveryPolicy":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


OnDelivered = Callable[[Delivery], None]
OnFailed = Callable[[Failure], None]
#: Re-read deliveries before they are retried: a newer document may have been written
#: since (a retried publish of an old one would replace it as the retained message).
#: Returning none withdraws them (the job was stopped): they get no callback.
Refresh = Callable[[list[Delivery]], list[Delivery]]
#: Send each delivery once, many in flight; call ``on_delivered`` as each is
#: acknowledged, and return the ones that were not.
DeliverRound = Callable[[Iterable[Delivery], DeliveryPolicy, OnDelivered], "list[Failure]"]


class Driver(Protocol):
    name: str
    #: False for interfaces the devices poll: delivery happens when a device fetches
    #: its document, not when the job runs.
    pushes: bool

    def deliver(
        self,
        deliveries: Iterable[Delivery],
        policy: DeliveryPolicy,
        on_delivered: OnDelivered,
        on_failed: OnFailed,
        refresh: Refresh | None = None,
    ) -> None:
        """Deliver what ``deliveries`` yields, retrying as ``policy`` says (each retry
        with the document ``refresh`` gives); every delivery ends in exactly one callback,
        unless ``refresh`` withdraws it. A caller stops a delivery by ending the iterator:
        what is in flight is then still acknowledged and recorded."""
        ...


def document(version: int, configuration: str) -> bytes:
    """The desired document, from the configuration object's JSON text: devices get the
    same bytes over every interface."""
    return f'{{"configuration":{configuration},"version":{version}}}'.encode()


class _Retry(Exception):
    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures


def deliver_in_rounds(
    deliver_round: DeliverRound,
    deliveries: Iterable[Delivery],
    policy: DeliveryPolicy,
    on_delivered: OnDelivered,
    on_failed: OnFailed,
    refresh: Refresh | None = None,
    sleep: Callable[[float], None] | None = None,
) -> None:
    """Deliver with retries for pipelined transports (MQTT): each round sends what is
    still undelivered, rounds are spaced by exponential backoff with jitter (tenacity),
    and what is left after ``policy.attempts`` rounds, or fails permanently, goes to
    ``on_failed``."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

    retrying = Retrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=wait_exponential(multiplier=policy.backoff, max=policy.max_backoff) + wait_random(0, policy.backoff),
        retry=retry_if_exception_type(_Retry),
        reraise=True,
        **({"sleep": sleep} if sleep else {}),  # type: ignore[arg-type]
    )
    pending: Iterable[Delivery] = deliveries
    try:
        for attempt in retrying:
            with attempt:
                if refresh is not None and attempt.retry_state.attempt_number > 1:
                    pending = refresh(list(pending))  # after the backoff: the newest documents
                failures = deliver_round(_counted(pending), policy, on_delivered)
                retry: list[Failure] = []
                for failure in failures:
                    if failure.permanent:
                        on_failed(failure)
                    else:
                        retry.append(failure)
                if retry:
                    pending = [f.delivery for f in retry]
                    raise _Retry(retry)
    except _Retry as exc:
        for failure in exc.failures:
            on_failed(failure)


def _counted(deliveries: Iterable[Delivery]) -> Iterator[Delivery]:
    for delivery in deliveries:
        delivery.attempts += 1
        yield delivery
