"""Billing behaviour: the credit packs on sale, a user's ledger history, and what each verified
Polar webhook does to the ledger (once per delivery, once per order)."""
from __future__ import annotations

import dataclasses
import logging

import peewee as pw

import models
from models import CreditEntry, User, WebhookEvent

from .polar import Delivery, OrderInfo, order_info

log = logging.getLogger("tunesmith.billing")

PAGE_SIZE = 20

KIND_LABELS = {
    "grant": "Credits granted",
    "reserve": "Song request",
    "capture": "Song made",
    "release": "Credits returned",
    "purchase": "Credit pack bought",
    "refund": "Purchase refunded",
    "admin": "Adjustment",
}


@dataclasses.dataclass(frozen=True)
class Pack:
    product_id: str
    credits: int


def packs(cfg) -> list[Pack]:
    """The credit packs from POLAR_PRODUCTS, smallest first."""
    return sorted((Pack(pid, credits) for pid, credits in (cfg.POLAR_PRODUCTS or {}).items()),
                  key=lambda p: (p.credits, p.product_id))


@dataclasses.dataclass
class HistoryPage:
    entries: list[CreditEntry]
    page: int
    has_more: bool


def history(user: User, page: int = 1, per_page: int = PAGE_SIZE) -> HistoryPage:
    """The user's ledger, newest first; each entry carries the balance right after it."""
    page = max(1, page)
    rows = list(CreditEntry.select()
                .where(CreditEntry.user == user.id)
                .order_by(CreditEntry.created_at.desc(), CreditEntry.id.desc())
                .limit(per_page + 1).offset((page - 1) * per_page))
    return HistoryPage(entries=rows[:per_page], page=page, has_more=len(rows) > per_page)


# ---------------------------------------------------------------------------- webhooks
@dataclasses.dataclass
class Outcome:
    status: int  # the HTTP status to answer Polar with
    code: str
    message: str
    loud: bool = False  # needs an operator's attention


HANDLED = ("order.paid", "order.refunded")


def handle_delivery(cfg, delivery: Delivery) -> Outcome:
    """Apply a verified delivery. The WebhookEvent row (keyed by webhook-id) and any ledger
    entry are written in one transaction, so a delivery takes effect exactly once however many
    times, and however concurrently, it arrives."""
    if delivery.type not in HANDLED:
        log.info("webhook %s: %s is not handled, ignored", delivery.webhook_id, delivery.type or "unknown type")
        return Outcome(202, "ignored", f"{delivery.type or 'this event type'} is not handled here")

    info = order_info(delivery)
    handler = _order_paid if delivery.type == "order.paid" else _order_refunded
    for attempt in range(3):
        try:
            with models.write_transaction():
                if WebhookEvent.select().where(WebhookEvent.id == delivery.webhook_id).exists():
                    return Outcome(200, "duplicate", "this delivery was already processed")
                # Inserted first: a concurrent copy of this delivery waits on this row and then
                # fails its own insert (PostgreSQL) or waits for the write lock (SQLite).
                WebhookEvent.create(id=delivery.webhook_id, type=delivery.type, outcome="processing")
                if info is None:
                    outcome = Outcome(202, "malformed", "the order in this event has no id", loud=True)
                else:
                    outcome = handler(cfg, info)
                WebhookEvent.update(outcome=f"{outcome.code}: {outcome.message}"[:255]).where(
                    WebhookEvent.id == delivery.webhook_id).execute()
            break
        except pw.IntegrityError:
            # Another copy of this delivery (or another delivery for the same order) committed
            # first; look again, now that its rows are visible.
            if attempt == 2:
                raise
    if outcome.loud:
        log.error("POLAR WEBHOOK NEEDS ATTENTION: %s %s: %s: %s", delivery.type, delivery.webhook_id,
                  outcome.code, outcome.message)
    else:
        log.info("webhook %s %s: %s: %s", delivery.type, delivery.webhook_id, outcome.code, outcome.message)
    return outcome


def _resolve_user(info: OrderInfo) -> tuple[User | None, str]:
    """The user named by the customer's external id (our user id), else by the checkout metadata."""
    ref = info.external_customer_id or info.metadata.get("user_id")
    try:
        user = User.get_or_none(User.id == int(str(ref))) if ref is not None else None
    except ValueError:
        user = None
    return user, str(ref)


def _order_paid(cfg, info: OrderInfo) -> Outcome:
    order = info.order_id
    user, who = _resolve_user(info)
    credits = (cfg.POLAR_PRODUCTS or {}).get(info.product_id or "")
    if user is None:
        return Outcome(202, "unknown_user", f"order {order}: no user {who!r} (product {info.product_id}); "
                                            f"nothing granted", loud=True)
    if credits is None:
        return Outcome(202, "unknown_product", f"order {order}: product {info.product_id} is not in "
                                               f"POLAR_PRODUCTS; nothing granted to user {user.id}", loud=True)
    if CreditEntry.select().where(CreditEntry.ref == f"order:{order}:refund").exists():
        return Outcome(200, "already_refunded", f"order {order} was refunded before its payment arrived; "
                                                f"nothing granted")
    entry = models.apply_credits(user.id, credits, "purchase", f"order:{order}",
                                 f"{credits}-credit pack (Polar order {order})")
    User.update(has_purchased=True).where(User.id == user.id).execute()
    if entry is None:
        return Outcome(200, "already_granted", f"order {order} was already credited")
    return Outcome(200, "granted", f"granted {credits} credits to user {user.id} for order {order}")


def _order_refunded(cfg, info: OrderInfo) -> Outcome:
    order = info.order_id
    ref = f"order:{order}:refund"
    grant = CreditEntry.get_or_none(CreditEntry.ref == f"order:{order}")
    if grant is None:
        user, who = _resolve_user(info)
        if user is None:
            return Outcome(202, "unknown_user", f"refund of order {order}: no user {who!r} and the order was "
                                                f"never credited; nothing to take back", loud=True)
        # Mark the order refunded so that a late order.paid does not credit it.
        models.apply_credits(user.id, 0, "refund", ref, f"Polar order {order} refunded before it was credited")
        return Outcome(200, "refunded_before_grant", f"order {order} was never credited; marked refunded",
                       loud=True)
    entry = models.apply_credits(grant.user_id, -grant.delta, "refund", ref,
                                 f"Refund of Polar order {order}", allow_partial=True)
    if entry is None:
        return Outcome(200, "already_refunded", f"order {order} was already taken back")
    if -entry.delta < grant.delta:
        return Outcome(200, "refunded_partially",
                       f"took back {-entry.delta} of {grant.delta} credits from user {grant.user_id} for "
                       f"order {order} (the rest was already spent)", loud=True)
    return Outcome(200, "refunded", f"took back {grant.delta} credits from user {grant.user_id} for order {order}")
