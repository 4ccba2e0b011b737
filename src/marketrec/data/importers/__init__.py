"""Importers: public datasets and marketplace exports into the canonical dataset (CONTRACT §1).

Each importer returns a validated `Dataset` whose `notes` list every row dropped or deduplicated
and every value coerced, so a person can see exactly how the source differs from what was
imported. Bad input (missing files, malformed lines, unknown columns) raises `DataError` or
`ConfigError` with the file and the problem, never a traceback.
"""

from __future__ import annotations

from marketrec.data.importers.amazon import import_amazon
from marketrec.data.importers.csv import (
    EVENT_FIELDS,
    ITEM_FIELDS,
    RETAILROCKET_EVENTS,
    RETAILROCKET_MAPPING,
    USER_FIELDS,
    import_csv,
    parse_mapping,
)
from marketrec.data.importers.movielens import ML1M_OCCUPATIONS, import_movielens, zip_region
from marketrec.data.importers.sequences import import_sequences

__all__ = [
    "EVENT_FIELDS",
    "ITEM_FIELDS",
    "ML1M_OCCUPATIONS",
    "RETAILROCKET_EVENTS",
    "RETAILROCKET_MAPPING",
    "USER_FIELDS",
    "import_amazon",
    "import_csv",
    "import_movielens",
    "import_sequences",
    "parse_mapping",
    "zip_region",
]
