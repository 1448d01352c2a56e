"""What can go wrong in a SMART launch, each with the page the clinician sees.

Part of the one error hierarchy (every class is a `CDSError`); cds/app.py's CDSError handler turns
a `SmartError` into an HTML page with `status` instead of an OperationOutcome. Messages name what
happened and what to do, never a token, code, state or identifier.
"""

from __future__ import annotations

from fhir_mappings import CDSError

__all__ = [
    "BadIdToken",
    "CardNotForPatient",
    "CardNotFound",
    "EhrDiscoveryFailed",
    "EhrRefused",
    "LaunchExpired",
    "MissingLaunchContext",
    "ReplayedCode",
    "ReplayedState",
    "SessionExpired",
    "SmartError",
    "TokenRefused",
    "UnknownIssuer",
    "UnknownState",
]


class SmartError(CDSError):
    code = "smart-error"
    status = 400
    title = "The app could not be opened"
    advice = "Close this window and open the app again from the card in the EHR."


class UnknownIssuer(SmartError):
    code = "smart-unknown-iss"
    status = 403
    title = "This EHR is not trusted by the app"
    advice = (
        "The launch named an EHR that is not configured (CDS_SMART_EHRS). "
        "Ask IT to register it; nothing was sent to it."
    )


class EhrDiscoveryFailed(SmartError):
    code = "smart-discovery-failed"
    status = 502
    title = "The EHR's SMART configuration could not be read"
    advice = (
        "Try again in a moment; if it persists, ask IT to check the EHR's .well-known/smart-configuration."
    )


class UnknownState(SmartError):
    code = "smart-unknown-state"
    title = "This sign-in answer does not belong to a launch of this app"
    advice = "Its state was altered or never issued here. Open the app again from the card."


class ReplayedState(SmartError):
    code = "smart-replayed-state"
    title = "This sign-in answer was already used"
    advice = "Each launch can be completed once. Open the app again from the card."


class LaunchExpired(SmartError):
    code = "smart-launch-expired"
    title = "The launch expired"
    advice = "Sign-in took too long. Open the app again from the card."


class EhrRefused(SmartError):
    """The EHR redirected back with `error` (RFC 6749 4.1.2.1), or refused the code exchange."""

    code = "smart-ehr-error"
    title = "The EHR did not authorize the app"

    def __init__(self, message: str, *, ehr_error: str = "unknown") -> None:
        super().__init__(message)
        self.ehr_error = ehr_error
        self.advice = (
            f"The EHR answered: {ehr_error}. Open the app again from the card; if it persists, ask IT."
        )


class ReplayedCode(SmartError):
    code = "smart-replayed-code"
    title = "This authorization code was already used"
    advice = "A code can be exchanged once. Open the app again from the card."


class TokenRefused(EhrRefused):
    code = "smart-token-refused"
    status = 502
    title = "The EHR refused to issue an access token"


class BadIdToken(SmartError):
    code = "smart-bad-id-token"
    status = 502
    title = "The EHR's identity token could not be verified"
    advice = "Nothing was shown or stored. Ask IT to check the EHR's signing keys and the app's client id."


class MissingLaunchContext(SmartError):
    code = "smart-no-context"
    title = "The launch did not say which patient or card to explain"
    advice = "Open the app from a card in the EHR."


class CardNotFound(SmartError):
    code = "smart-card-not-found"
    status = 404
    title = "This card is not known to the app"
    advice = "The card may come from another server, or its record was removed."


class CardNotForPatient(SmartError):
    code = "smart-card-not-for-patient"
    status = 403
    title = "This card is about another patient"
    advice = "The card does not belong to the patient the EHR opened. Open the app from this patient's card."


class SessionExpired(SmartError):
    code = "smart-session-expired"
    status = 401
    title = "This app session has ended"
    advice = "Open the app again from the card in the EHR."
