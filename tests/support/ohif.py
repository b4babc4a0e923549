"""OHIF v3's configuration for the gateway (shared/docs/viewers.md): the browser test serves it as
``app-config.js`` and the demo prints it (docs/gateway.md "Viewing in OHIF").

    app_config("https://fhir.example.org/dicomweb")   # window.config = {...}; the data source at Endpoint.address
"""

from __future__ import annotations

import json
from typing import Any

VERSION = "3.13.2"


def data_source(root: str) -> dict[str, Any]:
    """OHIF's DICOMweb data source at ``root`` (Endpoint.address: the token route or a capability address). The
    gateway serves QIDO-RS at every level with includefield, thumbnails and rendered images, so OHIF's defaults
    for those work; it does not do fuzzy matching (it says so with Warning 299)."""
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "facade",
        "configuration": {
            "friendlyName": "imaging FHIR facade",
            "name": "facade",
            "qidoRoot": root,
            "wadoRoot": root,
            "wadoUriRoot": root,
            "imageRendering": "wadors",
            "thumbnailRendering": "thumbnail",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": False,
            "qidoSupportsIncludeField": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }


def app_config(root: str) -> str:
    """A whole ``app-config.js`` for OHIF's published build, its one data source at ``root``."""
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "facade",
        "maxNumberOfWebWorkers": 1,
        "extensions": [],
        "modes": [],
        "dataSources": [data_source(root)],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"
