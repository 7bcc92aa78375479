"""Who gets which free device: the queue's order, as Snapshot.choose decides it (no etcd needed)."""

from __future__ import annotations

from usbwire.fleet import DeviceRecord, Match, Snapshot
from usbwire.fleet.etcd import KeyValue
from usbwire.fleet.keys import ClaimRecord, WaitRecord

BOARDS = {f"s{n}/1-1": DeviceRecord(f"s{n}", f"127.0.0.1:{3240 + n}", "1-1", "1209:0001") for n in (1, 2, 3)}
KEYBOARD = {"s1/1-2": DeviceRecord("s1", "127.0.0.1:3241", "1-2", "1209:0003")}
BOARD = Match(("1209:0001",))


def waiter(revision: int, count: int, *terms: str) -> tuple[KeyValue, WaitRecord]:
    key = KeyValue(f"/usbwire/v1/queue/{revision:x}", b"", revision, revision, 1)
    return key, WaitRecord(f"waiter-{revision}", list(terms), count)


def snapshot(*queue: tuple[KeyValue, WaitRecord], claimed: tuple[str, ...] = ()) -> Snapshot:
    claims = {device: ClaimRecord("someone", "0" * 64) for device in claimed}
    return Snapshot(100, {**BOARDS, **KEYBOARD}, claims, list(queue))


def test_first_in_the_queue_takes_the_first_free_device() -> None:
    chosen = snapshot(waiter(10, 1, "1209:0001")).choose(BOARD, 1, queued_at=10)
    assert [d.id for d in chosen or []] == ["s1/1-1"]


def test_a_waiter_gets_what_is_left_after_those_ahead_are_served() -> None:
    view = snapshot(waiter(10, 1, "1209:0001"), waiter(11, 1, "1209:0001"), waiter(12, 1, "1209:0001"))
    assert [d.id for d in view.choose(BOARD, 1, queued_at=12) or []] == ["s3/1-1"]


def test_a_waiter_behind_more_demand_than_devices_waits() -> None:
    view = snapshot(waiter(10, 2, "1209:0001"), waiter(11, 1, "1209:0001"), claimed=("s3/1-1",))
    assert view.choose(BOARD, 1, queued_at=11) is None


def test_a_group_claim_ahead_keeps_the_devices_it_waits_for() -> None:
    # Two boards are claimed; the group ahead wants two and only one is free: it is not handed on.
    view = snapshot(waiter(10, 2, "1209:0001"), waiter(11, 1, "1209:0001"), claimed=("s1/1-1", "s2/1-1"))
    assert view.choose(BOARD, 1, queued_at=11) is None


def test_waiters_for_other_devices_hold_nobody_up() -> None:
    view = snapshot(waiter(10, 1, "1209:0003"), waiter(11, 3, "1209:0001"), claimed=("s1/1-2",))
    assert [d.id for d in view.choose(BOARD, 3, queued_at=11) or []] == ["s1/1-1", "s2/1-1", "s3/1-1"]
