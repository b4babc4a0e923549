"""Code systems and the few DICOM → FHIR code tables the mapping needs (pure data)."""

from __future__ import annotations

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED_SYSTEM = "http://snomed.info/sct"
ACSN_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
ENDPOINT_CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"

# Series modalities that are not acquisition modalities (DICOM CID 29 lists acquisition ones): R4
# ImagingStudy.modality is "the series.modality values that are actual acquisition modalities".
NON_ACQUISITION_MODALITIES = frozenset(
    {
        "KO",
        "SR",
        "PR",
        "SEG",
        "REG",
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTRECORD",
        "DOC",
        "PLAN",
        "FID",
        "RWV",
    }
)

# BodyPartExamined (0018,0015) defined terms → SNOMED CT (PS3.16 Annex L; codes and meanings as in
# DICOM CID 4031 "Common Anatomic Region", 2025 edition).
BODY_PARTS: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "ACJOINT": ("85856004", "Acromioclavicular joint"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BLADDER": ("89837001", "Bladder"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CALCANEUS": ("80144004", "Calcaneus"),
    "CHEST": ("816094009", "Chest"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "CLAVICLE": ("51299004", "Clavicle"),
    "COCCYX": ("64688005", "Coccyx"),
    "COLON": ("71854001", "Colon"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("16953009", "Elbow joint"),
    "ESOPHAGUS": ("32849002", "Esophagus"),
    "EXTREMITY": ("66019005", "Extremity"),
    "EYE": ("81745001", "Eye"),
    "FEMUR": ("71341001", "Femur"),
    "FINGER": ("7569003", "Finger"),
    "FOOT": ("56459004", "Foot"),
    "FOREARM": ("14975008", "Forearm"),
    "GALLBLADDER": ("28231008", "Gallbladder"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and Neck"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("29836001", "Hip"),
    "HUMERUS": ("85050009", "Humerus"),
    "JAW": ("661005", "Jaw region"),
    "KNEE": ("72696002", "Knee"),
    "LARYNX": ("4596009", "Larynx"),
    "LEG": ("30021000", "Lower leg"),
    "LOWERLIMB": ("61685007", "Lower limb"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "MEDIASTINUM": ("72410000", "Mediastinum"),
    "NECK": ("45048000", "Neck"),
    "PANCREAS": ("15776009", "Pancreas"),
    "PELVIS": ("816092008", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"),
    "RECTUM": ("34402009", "Rectum"),
    "RIB": ("113197003", "Rib"),
    "SACRUM": ("54735007", "Sacrum"),
    "SCAPULA": ("79601000", "Scapula"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "STERNUM": ("56873002", "Sternum"),
    "STOMACH": ("69695003", "Stomach"),
    "THIGH": ("68367000", "Thigh"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "UPPERLIMB": ("53120007", "Upper limb"),
    "WHOLEBODY": ("38266002", "Entire body"),
    "WRIST": ("74670003", "Wrist joint"),
}

# Codes earlier editions of Annex L used for the same terms; accepted in searches.
_LEGACY_SNOMED = {"43799004": "CHEST", "113345001": "ABDOMEN", "12921003": "PELVIS"}

_BY_SNOMED: dict[str, list[str]] = {}
for _term, (_code, _) in BODY_PARTS.items():
    _BY_SNOMED.setdefault(_code, []).append(_term)
for _code, _term in _LEGACY_SNOMED.items():
    _BY_SNOMED.setdefault(_code, []).append(_term)

# Laterality (0020,0060) → SNOMED CT (the R4 example binding uses SNOMED lateralities).
LATERALITY: dict[str, tuple[str, str]] = {
    "L": ("7771000", "Left"),
    "R": ("24028007", "Right"),
    "B": ("51440002", "Right and left"),
}


def body_parts_for_snomed(code: str) -> list[str]:
    return list(_BY_SNOMED.get(code, ()))
