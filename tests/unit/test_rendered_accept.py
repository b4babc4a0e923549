"""One image type for a rendered request, however the client's Accept lists them (app.dicom.media_type)."""

from __future__ import annotations

import pytest

from app.dicom.media_type import DEFAULT_BULK, DEFAULT_INSTANCES, rendered_accept, retrieve_accept


@pytest.mark.parametrize(
    ("accept", "want"),
    [
        (None, None),
        ("", ""),
        ("image/png", "image/png"),
        ("image/jpeg, image/png;q=0.9", "image/jpeg"),
        ("image/jpeg;q=0.4, image/png;q=0.9", "image/png"),
        ("IMAGE/PNG;Q=1, image/jpeg", "image/png"),  # equal q: the first listed wins
        ("*/*", "image/jpeg"),
        ("image/*;q=0.5, image/gif;q=0.7", "image/gif"),
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "image/jpeg"),  # Chromium's <img>
        ("image/png;q=0, image/jpeg;q=0.1", "image/jpeg"),  # q=0: not acceptable (RFC 9110 §12.4.2)
        ("image/png;q=abc", "image/png"),  # an unreadable q counts as 1
        ('multipart/related; type="image/png, x", image/png;q=0.2', "image/png"),  # commas in quotes stay
        ("video/mp4", "video/mp4"),  # none of the image types: passed on as sent, the PACS decides
        ("image/png;q=0", "image/png;q=0"),
    ],
)
def test_rendered_accept(accept: str | None, want: str | None) -> None:
    assert rendered_accept(accept) == want


@pytest.mark.parametrize(
    ("accept", "resource", "sent"),
    [
        (None, "", DEFAULT_INSTANCES),
        ("*/*", "", DEFAULT_INSTANCES),  # dicomtrolley's series downloads
        ("multipart/related", "", DEFAULT_INSTANCES),
        ('multipart/related; type="*/*"', "frames", DEFAULT_BULK),  # dicomweb-client's frames default
        ("*/*", "bulk", DEFAULT_BULK),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', "", None),
        ('multipart/related; type="application/octet-stream"', "frames", None),
        ("image/jpeg, */*;q=0.1", "frames", None),
    ],
)
def test_retrieve_accept_defaults_when_no_type_is_named(accept: str | None, resource: str, sent: str | None) -> None:
    # PS3.18 §8.7.3.5: the default media type when the client states no preference; else the header as sent.
    assert retrieve_accept(accept, resource) == (sent or accept)
