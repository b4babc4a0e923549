"""FHIR-side pure code: search parsing and value syntax, parameter tables, dates, ids, bundles, subsetting."""
