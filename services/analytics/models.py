"""analytics-service's event payloads (what it reads of them) and replies (camelCase on the wire)."""
from __future__ import annotations


from pydantic import Field

from services.kit import CamelModel, EventPayload, ReferenceId


Id = ReferenceId
Payload = EventPayload


class UserChanged(Payload):
    user_id: Id
    role: str | None = None


class ProductChanged(Payload):
    product_id: Id
    seller_id: Id | None = None
    name: str | None = None
    price_cents: int | None = None
    stock: int | None = None
    deleted: bool = False


class StockUpdated(Payload):
    product_id: Id
    seller_id: Id | None = None
    stock: int
    previous_stock: int | None = None
    reason: str | None = None
    low_stock: bool = False


class Item(Payload):
    product_id: Id
    quantity: int = Field(ge=0)
    unit_price_cents: int | None = None


class OrderCreated(Payload):
    order_id: Id
    user_id: Id | None = None
    seller_id: Id | None = None
    items: list[Item] = []
    amount_cents: int | None = None
    currency: str | None = None


class OrderStatusUpdated(Payload):
    order_id: Id
    status: str


class PaymentOutcome(Payload):
    payment_id: Id | None = None
    order_id: Id
    amount_cents: int | None = None
    currency: str | None = None
    source: str | None = Field(None, description='"order" (charged for order.created) or "api" (a direct charge).')


class ReservationFailed(Payload):
    order_id: Id
    seller_id: Id | None = None


class NotificationOutcome(Payload):
    notification_id: Id
    related_event_id: str | None = None
    campaign_id: str | None = None
    order_id: Id | None = None
    product_id: Id | None = None


class BroadcastRequested(Payload):
    campaign_id: Id
    sender_id: Id | None = None


Revenue = dict[str, int]
"""Currency -> cents of paid orders ("XXX" when an order named no currency)."""


class StockMovements(CamelModel):
    count: int = Field(description="product.stock.updated events.")
    units_in: int = Field(description="Units added (restocks, released reservations).")
    units_out: int = Field(description="Units taken (reservations for orders, manual decreases).")


class TopProduct(CamelModel):
    product_id: str
    name: str | None
    units_sold: int


class SellerMetrics(CamelModel):
    seller_id: str
    orders: int = Field(description="Orders of the seller's products, whatever became of them.")
    paid_orders: int
    revenue_cents: Revenue = Field(description="Amounts of paid orders, by currency.")
    units_sold: int = Field(description="Units in paid orders.")
    payment_failures: int
    stock_movements: StockMovements
    products: int = Field(description="The seller's products, deleted ones left out.")
    current_stock: int = Field(description="Units in stock over all the seller's products.")
    low_stock_products: int
    notifications_sent: int = Field(description="Messages about the seller's orders, products and campaigns.")
    top_products: list[TopProduct]


class ProductMetrics(CamelModel):
    product_id: str
    seller_id: str | None
    name: str | None
    orders: int
    paid_orders: int
    revenue_cents: Revenue
    units_sold: int
    payment_failures: int
    stock_movements: StockMovements
    current_stock: int | None = Field(description="The stock of the latest product event; null before any.")
    low_stock: bool
    notifications_sent: int


class Summary(CamelModel):
    orders: int
    paid_orders: int
    revenue_cents: Revenue
    units_sold: int
    payment_failures: int
    stock_movements: StockMovements
    sellers: int
    products: int
    users: int
    notifications_sent: int
    notifications_failed: int
    events: int
    events_by_type: dict[str, int]
