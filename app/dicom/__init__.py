"""DICOM-side pure code: DICOM JSON, QIDO requests, KOS parsing and building, IOCM rejection notes, terminology."""
