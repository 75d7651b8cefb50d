"""Usage: the ledger of AI requests and everything computed from it.

- ``ledger``: ``LedgerWriter``, the durable, batched writer of ledger records (``Record``);
- ``record_json``: a record as JSON and back (the Redis settle stream carries records);
- ``rollups``: hourly and per-user daily sums, written in the ledger writer's transaction, and
  how a window splits into what they answer and the edges read from the ledger;
- ``bins``: the fixed latency and TTFT histogram bins a record adds to;
- ``histograms``: exact percentiles located with those bins;
- ``percentiles``: exact nearest-rank percentiles by sampled selection (no histogram needed);
- ``queries``: reads of the ledger (newest-first pages, a window's values, the export's rows);
- ``schemas``: ``UsageEntry``, a record as the API shows it.

A layer below ``gateway`` and ``admin``: it imports only ``core``, ``models`` and ``settings``.
The callers shape what they read (HTTP pages, cursors, CSV).
"""

from kiban.usage.bins import EDGES, LATENCY, TTFT, bin_of, bin_range, record_bins
from kiban.usage.histograms import Buckets, Fetch, Metric
from kiban.usage.histograms import percentiles as binned_percentiles
from kiban.usage.ledger import LedgerWriter, Record, write_records
from kiban.usage.percentiles import Column, Selection, Wanted, nearest_rank
from kiban.usage.queries import (
    EXPORT_COLUMNS,
    RecordFilter,
    distinct_values,
    export_query,
    newest_records,
    records_with_emails,
    stream_export,
)
from kiban.usage.record_json import record_from_json, record_to_json
from kiban.usage.rollups import (
    DAY,
    HOUR,
    UPSERTS,
    hourly_aggregates,
    rebuild,
    rollup_rows,
    upsert_statement,
)
from kiban.usage.rollups import split as split_window
from kiban.usage.schemas import UsageEntry

__all__ = [
    "DAY",
    "EDGES",
    "EXPORT_COLUMNS",
    "HOUR",
    "LATENCY",
    "TTFT",
    "UPSERTS",
    "Buckets",
    "Column",
    "Fetch",
    "LedgerWriter",
    "Metric",
    "Record",
    "RecordFilter",
    "Selection",
    "UsageEntry",
    "Wanted",
    "bin_of",
    "bin_range",
    "binned_percentiles",
    "distinct_values",
    "export_query",
    "hourly_aggregates",
    "nearest_rank",
    "newest_records",
    "rebuild",
    "record_bins",
    "record_from_json",
    "record_to_json",
    "records_with_emails",
    "rollup_rows",
    "split_window",
    "stream_export",
    "upsert_statement",
    "write_records",
]
