"""SMART discovery documents, built from settings (pure): ``.well-known/smart-configuration`` (SMART App Launch
2.x §Conformance) and the CapabilityStatement ``rest.security`` element with the ``oauth-uris`` extension."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

SMART_IMAGING_ACCESS: Final = "smart-imaging-access"
SMART_IMAGING_APP_LAUNCH: Final = "http://fhir.org/argonaut/smart-imaging/capabilities/app-launch"
SMART_IMAGING_BACKEND: Final = "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services"
DEFAULT_CAPABILITIES: Final = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "context-ehr-patient",
    "context-standalone-patient",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    SMART_IMAGING_ACCESS,  # Argonaut: top-level, since this endpoint serves ImagingStudy itself
    SMART_IMAGING_APP_LAUNCH,
)
DEFAULT_SCOPES: Final = (
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "patient/ImagingStudy.rs",
    "patient/ImagingStudy.read",
    "user/ImagingStudy.rs",
    "patient/Patient.rs",
    "user/Patient.rs",
)


def smart_configuration(
    *,
    authorization_endpoint: str | None,
    token_endpoint: str,
    issuer: str | None = None,
    jwks_uri: str | None = None,
    introspection_endpoint: str | None = None,
    revocation_endpoint: str | None = None,
    management_endpoint: str | None = None,
    registration_endpoint: str | None = None,
    capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
    scopes_supported: Sequence[str] = DEFAULT_SCOPES,
    grant_types_supported: Sequence[str] = ("authorization_code",),
    token_endpoint_auth_methods_supported: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``.well-known/smart-configuration`` document (SMART App Launch 2.x "Conformance", Metadata).

    The endpoints are the authorization server's; the facade only publishes them. Per the spec: ``issuer`` is
    given only with ``sso-openid-connect`` (then it and ``jwks_uri`` are required; "otherwise, omitted"),
    ``authorization_endpoint`` is required with ``launch-ehr``/``launch-standalone``, ``grant_types_supported``,
    ``token_endpoint``, ``capabilities`` and ``code_challenge_methods_supported`` (``S256``, never ``plain``)
    always. Raises ValueError on a combination the spec forbids. Served as ``application/json`` whatever the
    request's Accept.
    """
    caps = list(dict.fromkeys(capabilities))
    if "sso-openid-connect" in caps and not (issuer and jwks_uri):
        raise ValueError("the sso-openid-connect capability needs issuer and jwks_uri")
    if {"launch-ehr", "launch-standalone"} & set(caps) and not authorization_endpoint:
        raise ValueError("launch capabilities need an authorization_endpoint")
    if not grant_types_supported:
        raise ValueError("grant_types_supported must not be empty")
    doc: dict[str, Any] = {}
    if issuer and "sso-openid-connect" in caps:
        doc["issuer"] = issuer
    if jwks_uri:
        doc["jwks_uri"] = jwks_uri
    if authorization_endpoint:
        doc["authorization_endpoint"] = authorization_endpoint
    doc["grant_types_supported"] = list(grant_types_supported)
    doc["token_endpoint"] = token_endpoint
    if token_endpoint_auth_methods_supported:
        doc["token_endpoint_auth_methods_supported"] = list(token_endpoint_auth_methods_supported)
    for name, url in (
        ("registration_endpoint", registration_endpoint),
        ("management_endpoint", management_endpoint),
        ("introspection_endpoint", introspection_endpoint),
        ("revocation_endpoint", revocation_endpoint),
    ):
        if url:
            doc[name] = url
    doc["scopes_supported"] = list(scopes_supported)
    doc["response_types_supported"] = ["code"]
    doc["capabilities"] = caps
    doc["code_challenge_methods_supported"] = ["S256"]
    return doc


OAUTH_URIS: Final = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE: Final = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def capability_security(
    *,
    token_endpoint: str,
    authorization_endpoint: str | None = None,
    introspection_endpoint: str | None = None,
    revocation_endpoint: str | None = None,
    management_endpoint: str | None = None,
    registration_endpoint: str | None = None,
    cors: bool | None = None,
) -> dict[str, Any]:
    """``CapabilityStatement.rest.security`` for SMART (R4 and R5 alike).

    The ``oauth-uris`` extension (token 1..1; authorize, register, manage, introspect, revoke 0..1) is what SMART
    1.0 clients read; SMART 2.x deprecates it in favour of ``.well-known/smart-configuration`` but still lists it,
    so both are served. ``service`` is ``SMART-on-FHIR`` from the restful-security-service code system.
    """
    uris = [
        ("token", token_endpoint),
        ("authorize", authorization_endpoint),
        ("register", registration_endpoint),
        ("manage", management_endpoint),
        ("introspect", introspection_endpoint),
        ("revoke", revocation_endpoint),
    ]
    security: dict[str, Any] = {
        "extension": [
            {"url": OAUTH_URIS, "extension": [{"url": name, "valueUri": uri} for name, uri in uris if uri]},
        ],
    }
    if cors is not None:
        security["cors"] = cors
    security["service"] = [
        {
            "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
        }
    ]
    security["description"] = "Bearer access tokens from the SMART authorization server are required."
    return security
