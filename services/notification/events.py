"""notification-service's event beyond the spec's notification.sent:

    notification.failed  {notificationId, channel, to, template, relatedEventId, campaignId?, userId?, reason}

published when the provider refused a message for good or every attempt failed, so that a campaign
(broadcast-service) can account for each of its recipients. Not a spec type, so it is defined here.
"""
from __future__ import annotations

from services.events.types import check_type

NOTIFICATION_FAILED = check_type("notification.failed")
