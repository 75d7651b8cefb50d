"""ORM models, one module per table family. Importing this package registers every table."""

from kiban.models.auth import ApiKey, AuthChange, AuthEpoch, LoginAttempt, RefreshToken
from kiban.models.base import Base
from kiban.models.billing import (
    BillingCustomer,
    BillingSubscription,
    SubscriptionState,
    WebhookEvent,
)
from kiban.models.knowledge import (
    ChunkVector,
    Document,
    DocumentChunk,
    KnowledgeTerm,
    KnowledgeVectorVersion,
)
from kiban.models.quota import ApiKeyLimit, QuotaPeriod, QuotaReservation, QuotaSettlement
from kiban.models.rollup import (
    UsageHistogramDaily,
    UsageHistogramHourly,
    UsageRollupHourly,
    UsageRollupUserDaily,
)
from kiban.models.usage import UsageRecord, UsageStatus
from kiban.models.user import Role, User

__all__ = [
    "ApiKey",
    "ApiKeyLimit",
    "AuthChange",
    "AuthEpoch",
    "Base",
    "BillingCustomer",
    "BillingSubscription",
    "ChunkVector",
    "Document",
    "DocumentChunk",
    "KnowledgeTerm",
    "KnowledgeVectorVersion",
    "LoginAttempt",
    "QuotaPeriod",
    "QuotaReservation",
    "QuotaSettlement",
    "RefreshToken",
    "Role",
    "SubscriptionState",
    "UsageHistogramDaily",
    "UsageHistogramHourly",
    "UsageRecord",
    "UsageRollupHourly",
    "UsageRollupUserDaily",
    "UsageStatus",
    "User",
    "WebhookEvent",
]
