"""Imaging FHIR facade: FHIR R4 ImagingStudy search over a DICOMweb PACS."""

__version__ = "0.1.0"
