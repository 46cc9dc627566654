r"""Trip booking: a saga with compensations, a wait for the payment, a child function and a map.

`book-trip` quotes every leg in parallel (`map`), books the flight and the hotel (each with an undo
registered by `compensate`), asks for payment (`publish`), waits up to `paymentWindow` [10m] for the
matching `payment.confirmed` event (`wait_for_event`), then runs `issue-itinerary` as a child run
(`invoke`). If the trip cannot go ahead, the run fails and the undos run, newest first.

    ironflow serve                                   # terminal 1: the server
    python examples/saga_and_waits/worker.py         # terminal 2: this worker

1. Paid in time: the run waits for its payment, then invokes issue-itinerary and completes.

    ironflow emit trip.requested \
      --data '{"tripId": "trip_1", "hotel": "hotel-alma", "legs": ["LIS-BER", "BER-LIS"]}'
    ironflow runs list --function book-trip          # waiting: step `payment` waits for its event
    ironflow emit payment.confirmed --data '{"tripId": "trip_9", "paymentId": "pay_0"}'   # no match
    ironflow emit payment.confirmed --data '{"tripId": "trip_1", "paymentId": "pay_1"}'
    ironflow runs list --function book-trip          # completed
    ironflow runs get <run id>                       # output, and the issue-itinerary child run
    ironflow runs steps <run id>
    # price-legs/0, price-legs/1, book-flight, book-hotel, request-payment, payment, issue-itinerary

   Only events emitted after the run reached the wait count: send the payment once it is `waiting`.

2. No rooms: book-hotel fails for good, book-flight/undo cancels the flight, the run fails.

    ironflow emit trip.requested --wait \
      --data '{"tripId": "trip_2", "hotel": "grand-budapest", "legs": ["LIS-VIE"]}'
    ironflow runs steps <run id>                     # book-hotel failed, book-flight/undo completed

3. Never paid: the wait times out and returns None, the handler gives up, both bookings are undone.

    ironflow emit trip.requested --wait \
      --data '{"tripId": "trip_3", "hotel": "hotel-alma", "legs": ["LIS-MAD"], "paymentWindow": "5s"}'
    ironflow runs steps <run id>                     # payment completed with output null, then
                                                     # book-hotel/undo and book-flight/undo

`--wait` exits 1 in cases 2 and 3: the run failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ironflow

log = logging.getLogger("trips")

FARES = {"LIS-BER": 180, "BER-LIS": 170, "LIS-VIE": 210, "LIS-MAD": 90}
FULL_HOTELS = {"grand-budapest"}
NIGHTLY_RATE = 95


# -- stand-ins for the airline, the hotel and the document service ----------------------------


def quote_leg(leg: str) -> dict[str, Any]:
    time.sleep(0.2)  # a plain function: Ironflow runs it in a thread
    return {"leg": leg, "fare": FARES.get(leg, 150)}


async def book_flight(trip_id: str, legs: list[str]) -> dict[str, Any]:
    await asyncio.sleep(0.3)
    return {"booking": f"FL-{trip_id}", "legs": legs}


async def cancel_flight(booking: str) -> dict[str, Any]:
    log.info("cancelling flight %s", booking)
    return {"cancelled": booking}


async def book_hotel(trip_id: str, hotel: str) -> dict[str, Any]:
    await asyncio.sleep(0.3)
    if hotel in FULL_HOTELS:
        # Retrying will not free a room: fail at once (the step is not retried).
        raise ironflow.NonRetryableError(f"{hotel} has no rooms left for {trip_id}")
    return {"booking": f"HT-{trip_id}", "hotel": hotel}


async def cancel_hotel(booking: str) -> dict[str, Any]:
    log.info("cancelling hotel %s", booking)
    return {"cancelled": booking}


def render_itinerary(trip_id: str, legs: list[str]) -> dict[str, Any]:
    return {"url": f"https://trips.example.com/{trip_id}.pdf", "pages": len(legs) + 1}


# -- the functions ------------------------------------------------------------------------------


@ironflow.function(id="issue-itinerary")  # no triggers: only ever invoked
async def issue_itinerary(ctx: ironflow.Context) -> dict[str, Any]:
    trip = ctx.event.data  # the data the parent passed to invoke
    return await ctx.step.run("render", render_itinerary, trip["tripId"], trip["legs"])


@ironflow.function(
    id="book-trip",
    triggers=[ironflow.on_event("trip.requested")],
    retry=ironflow.Retry(max_attempts=3, initial_delay="1s"),
)
async def book_trip(ctx: ironflow.Context) -> dict[str, Any]:
    trip = ctx.event.data
    trip_id, legs = trip["tripId"], trip["legs"]

    # One durable branch per leg (price-legs/0, price-legs/1, ...), results in input order.
    quotes = await ctx.step.map("price-legs", legs, quote_leg, concurrency=4)
    amount = sum(quote["fare"] for quote in quotes) + NIGHTLY_RATE

    flight = await ctx.step.run("book-flight", book_flight, trip_id, legs)
    ctx.step.compensate("book-flight", cancel_flight, flight["booking"])
    hotel = await ctx.step.run("book-hotel", book_hotel, trip_id, trip["hotel"])
    ctx.step.compensate("book-hotel", cancel_hotel, hotel["booking"])

    # Once per run, however often the handler is replayed.
    await ctx.step.publish(
        "payments.requested", {"tripId": trip_id, "amount": amount}, name="request-payment"
    )
    payment = await ctx.step.wait_for_event(
        "payment",
        event="payment.confirmed",
        match="async.data.tripId == event.data.tripId",
        timeout=trip.get("paymentWindow", "10m"),
    )
    if payment is None:
        # Raised out of the handler, a NonRetryableError fails the run for good: the undos run.
        raise ironflow.NonRetryableError(f"trip {trip_id}: payment not confirmed in time")

    itinerary = await ctx.step.invoke(issue_itinerary, {"tripId": trip_id, "legs": legs}, timeout="1m")
    return {
        "trip": trip_id,
        "amount": amount,
        "payment": payment.data["paymentId"],
        "flight": flight["booking"],
        "hotel": hotel["booking"],
        "itinerary": itinerary["url"],
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(ironflow.Worker(functions=[book_trip, issue_itinerary]).run())
