"""The only code that talks to the PACS and the EHR: DICOMweb clients, caches, the circuit breaker, request scope."""
