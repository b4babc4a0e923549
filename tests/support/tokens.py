"""Signing keys and SMART access tokens made by the tests (RS256 JWTs), and a JWK Set file for the facade."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://auth.example.org"
AUDIENCE = "https://imaging.example.org/fhir"


class TokenIssuer:
    """One RSA key: ``write_jwks(dir)`` for FACADE_JWKS_FILE, ``token(scope, patient)`` for requests."""

    def __init__(self, kid: str = "test-key") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [public | {"kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def write_jwks(self, directory: Path) -> Path:
        path = directory / "jwks.json"
        path.write_text(json.dumps(self.jwks()), encoding="utf-8")
        return path

    def token(self, scope: str, patient: str | None = None, *, lifetime: int = 300, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-1",
            "client_id": "viewer",
            "iat": now,
            "exp": now + lifetime,
            "scope": scope,
        }
        if patient is not None:
            body["patient"] = patient
        return jwt.encode(body | claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def headers(self, scope: str, patient: str | None = None, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, patient, **claims)}"}
