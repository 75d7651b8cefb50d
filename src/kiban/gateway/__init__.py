"""The AI gateway: one flow for every AI surface, the call and its finish, providers, the model
catalog and prices.

What other packages use: the ``Admission`` protocol a quota implementation fulfils (and the
types it speaks: ``AdmissionRequest``, ``Ticket``, ``Usage``), and the catalog and prices it is
built from.
"""

from kiban.gateway.admission import Admission, AdmissionRequest, OpenAdmission, Ticket, Usage
from kiban.gateway.catalog import Catalog
from kiban.gateway.pricing import PriceTable
from kiban.gateway.service import Gateway, GatewayConfig

__all__ = [
    "Admission",
    "AdmissionRequest",
    "Catalog",
    "Gateway",
    "GatewayConfig",
    "OpenAdmission",
    "PriceTable",
    "Ticket",
    "Usage",
]
