"""Knowledge errors (each with its HTTP status and a stable code).

::

    AppError
    ├── PayloadTooLarge       413 file_too_large
    ├── UnsupportedMediaType  415 unsupported_media_type
    ├── Unprocessable         422 empty_document | undecodable_document | unreadable_pdf |
    │                             unreadable_csv | no_files
    ├── Forbidden             403 shared_requires_admin | seed_requires_admin |
    │                             shared_document_read_only
    └── NotFound              404 document_not_found
"""

from __future__ import annotations

from kiban.core.errors import (
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)


class FileTooLarge(PayloadTooLarge):
    code = "file_too_large"
    default_message = "The file is too large."


class UnsupportedFileType(UnsupportedMediaType):
    code = "unsupported_media_type"
    default_message = "This file type is not supported."
    default_hint = "Upload .txt, .md, .pdf, .html or .csv files."


class EmptyDocument(Unprocessable):
    code = "empty_document"
    default_message = "The file has no text to index."


class UndecodableDocument(Unprocessable):
    code = "undecodable_document"
    default_message = "The file's text encoding could not be recognized."
    default_hint = "Save the file as UTF-8 (Shift_JIS/CP932 and EUC-JP are also understood)."


class UnreadablePdf(Unprocessable):
    code = "unreadable_pdf"
    default_message = "The PDF could not be read."
    default_hint = "Only PDFs with a text layer are supported (scanned images are not)."


class UnreadableCsv(Unprocessable):
    code = "unreadable_csv"
    default_message = "The CSV file could not be read."
    default_hint = "Check its quoting, or upload it as .txt."


class NoFiles(Unprocessable):
    code = "no_files"
    default_message = "No file was uploaded."
    default_hint = "Send one or more files in multipart form fields named 'files' (or 'file')."


class DocumentQuotaExceeded(Forbidden):
    code = "document_quota_exceeded"
    default_hint = "Delete documents you no longer need (DELETE /documents/{id}), or upgrade."


class SharedRequiresAdmin(Forbidden):
    code = "shared_requires_admin"
    default_message = "Only administrators can upload shared documents."


class SeedRequiresAdmin(Forbidden):
    code = "seed_requires_admin"
    default_message = "Only administrators can load the sample documents outside development."


class SharedDocumentReadOnly(Forbidden):
    code = "shared_document_read_only"
    default_message = "Only an administrator can delete a shared document."


class DocumentNotFound(NotFound):
    code = "document_not_found"
    default_message = "No such document."
