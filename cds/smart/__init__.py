"""The clinician's side: a SMART App Launch 2.x explanation and feedback app served by us.

Launched from a card's SMART link (EHR launch) or standalone, it signs in with the EHR
(authorization code + PKCE S256, id_token checked), finds the card from the launch context, and
shows its risk, a SHAP waterfall, the risk trend over the stay and the model card in brief;
feedback goes through the same path as CDS Hooks feedback.
"""

from __future__ import annotations

from .app import SmartApp, card_from_context, relative_user
from .errors import SmartError
from .pages import error_page
from .routes import router, smart_app

__all__ = [
    "SmartApp",
    "SmartError",
    "card_from_context",
    "error_page",
    "relative_user",
    "router",
    "smart_app",
]
