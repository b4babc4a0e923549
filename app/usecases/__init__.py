"""The use cases that sequence requests: ImagingStudy and Patient search and read, manifests read and create."""
