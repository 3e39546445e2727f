"""The text of each kind of message (template), filled from an event's data."""
from __future__ import annotations

TEMPLATES: dict[str, str] = {
    "order.confirmation": "Kadai: we received your order {orderId}{amount}.",
    "order.new": "Kadai: new order {orderId}{amount} for your shop.",
    "order.status": "Kadai: your order {orderId} is now {status}{reason}.",
    "payment.receipt": "Kadai: payment{amount} for your order {orderId} received. Thank you!",
    "order.paid": "Kadai: order {orderId} was paid{amount}; it can be shipped.",
    "payment.failed": "Kadai: the payment for your order {orderId} failed{reason}.",
    "stock.low": "Kadai: low stock for product {product}: {stock} left.",
}
"""Template name -> text; broadcast messages ("broadcast") are the campaign's own text."""


def money(cents: int | None, currency: str | None) -> str:
    """ " (12.50 EUR)"-style suffix for a message; empty when the amount is unknown."""
    if cents is None:
        return ""
    units, rest = divmod(abs(cents), 100)
    sign = "-" if cents < 0 else ""
    return f" ({sign}{units}.{rest:02d}{' ' + currency if currency else ''})"


def reason(text: str | None) -> str:
    """ " (insufficient stock)"-style suffix from a machine reason such as insufficient_stock."""
    return f" ({text.replace('_', ' ')})" if text else ""


def render(template: str, **fields: object) -> str:
    """The message text of a template; KeyError for an unknown template or a missing field."""
    return TEMPLATES[template].format(**fields)
