"""The ASGI shell: handlers, FHIR HTTP rules, the CapabilityStatement, the landing page, observability."""
