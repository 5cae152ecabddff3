"""Real coordinates of the major AWS, GCP and Azure regions.

A region id is ``provider:name`` (``aws:us-east-1``, ``gcp:europe-west1``,
``azure:westeurope``). Any other region needs explicit lat/lon in its config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Region:
    id: str
    provider: str
    lat: float
    lon: float
    city: str


_TABLE: tuple[tuple[str, float, float, str], ...] = (
    ("aws:us-east-1", 38.94, -77.45, "N. Virginia"),
    ("aws:us-east-2", 40.10, -83.00, "Ohio"),
    ("aws:us-west-1", 37.35, -121.96, "N. California"),
    ("aws:us-west-2", 45.84, -119.70, "Oregon"),
    ("aws:ca-central-1", 45.50, -73.57, "Montreal"),
    ("aws:sa-east-1", -23.55, -46.63, "Sao Paulo"),
    ("aws:eu-west-1", 53.35, -6.26, "Dublin"),
    ("aws:eu-west-2", 51.51, -0.13, "London"),
    ("aws:eu-west-3", 48.86, 2.35, "Paris"),
    ("aws:eu-central-1", 50.11, 8.68, "Frankfurt"),
    ("aws:eu-north-1", 59.33, 18.07, "Stockholm"),
    ("aws:ap-south-1", 19.08, 72.88, "Mumbai"),
    ("aws:ap-southeast-1", 1.35, 103.82, "Singapore"),
    ("aws:ap-southeast-2", -33.87, 151.21, "Sydney"),
    ("aws:ap-northeast-1", 35.68, 139.69, "Tokyo"),
    ("aws:ap-northeast-2", 37.57, 126.98, "Seoul"),
    ("aws:af-south-1", -33.92, 18.42, "Cape Town"),
    ("aws:me-south-1", 26.07, 50.56, "Bahrain"),
    ("gcp:us-central1", 41.26, -95.86, "Council Bluffs"),
    ("gcp:us-east1", 33.20, -80.01, "Moncks Corner"),
    ("gcp:us-east4", 39.04, -77.49, "Ashburn"),
    ("gcp:us-west1", 45.60, -121.18, "The Dalles"),
    ("gcp:southamerica-east1", -23.55, -46.63, "Sao Paulo"),
    ("gcp:europe-west1", 50.45, 3.82, "St. Ghislain"),
    ("gcp:europe-west2", 51.51, -0.13, "London"),
    ("gcp:europe-west3", 50.11, 8.68, "Frankfurt"),
    ("gcp:europe-west4", 53.44, 6.84, "Eemshaven"),
    ("gcp:europe-north1", 60.57, 27.19, "Hamina"),
    ("gcp:asia-east1", 24.05, 120.52, "Changhua"),
    ("gcp:asia-northeast1", 35.68, 139.69, "Tokyo"),
    ("gcp:asia-south1", 19.08, 72.88, "Mumbai"),
    ("gcp:asia-southeast1", 1.35, 103.82, "Jurong West"),
    ("gcp:australia-southeast1", -33.87, 151.21, "Sydney"),
    ("azure:eastus", 37.37, -79.82, "Virginia"),
    ("azure:eastus2", 36.67, -78.39, "Virginia"),
    ("azure:westus2", 47.23, -119.85, "Washington"),
    ("azure:centralus", 41.59, -93.60, "Iowa"),
    ("azure:brazilsouth", -23.55, -46.63, "Sao Paulo"),
    ("azure:northeurope", 53.35, -6.26, "Ireland"),
    ("azure:westeurope", 52.37, 4.90, "Netherlands"),
    ("azure:uksouth", 50.94, -0.80, "London"),
    ("azure:germanywestcentral", 50.11, 8.68, "Frankfurt"),
    ("azure:southeastasia", 1.28, 103.83, "Singapore"),
    ("azure:eastasia", 22.27, 114.19, "Hong Kong"),
    ("azure:japaneast", 35.68, 139.77, "Tokyo"),
    ("azure:australiaeast", -33.86, 151.21, "New South Wales"),
    ("azure:centralindia", 18.58, 73.92, "Pune"),
    ("azure:southafricanorth", -25.73, 28.22, "Johannesburg"),
)

KNOWN: dict[str, Region] = {rid: Region(rid, rid.split(":", 1)[0], lat, lon, city) for rid, lat, lon, city in _TABLE}


def provider_of(region_id: str) -> str:
    """The provider prefix of a region id, or ``onprem`` when it has none."""
    return region_id.split(":", 1)[0] if ":" in region_id else "onprem"


def resolve(region_id: str, lat: float | None = None, lon: float | None = None) -> Region:
    """The region for ``region_id``: explicit coordinates win over the built-in table."""
    if lat is not None and lon is not None:
        known = KNOWN.get(region_id)
        return Region(region_id, provider_of(region_id), lat, lon, known.city if known else region_id)
    known = KNOWN.get(region_id)
    if known is None:
        raise ValueError(f"region {region_id!r} is not in the built-in table; set its latitude and longitude")
    return known


# Approximate round-trip times between the demo's default regions, from public
# inter-region latency measurements (milliseconds).
DEFAULT_REGIONS = (
    "aws:us-east-1",
    "gcp:europe-west1",
    "azure:southeastasia",
    "aws:ap-northeast-1",
    "gcp:southamerica-east1",
    "azure:australiaeast",
)
_RTT_MS: dict[frozenset[str], float] = {
    frozenset(pair): rtt
    for pair, rtt in (
        (("aws:us-east-1", "gcp:europe-west1"), 85),
        (("aws:us-east-1", "azure:southeastasia"), 220),
        (("aws:us-east-1", "aws:ap-northeast-1"), 150),
        (("aws:us-east-1", "gcp:southamerica-east1"), 115),
        (("aws:us-east-1", "azure:australiaeast"), 200),
        (("gcp:europe-west1", "azure:southeastasia"), 160),
        (("gcp:europe-west1", "aws:ap-northeast-1"), 225),
        (("gcp:europe-west1", "gcp:southamerica-east1"), 190),
        (("gcp:europe-west1", "azure:australiaeast"), 255),
        (("azure:southeastasia", "aws:ap-northeast-1"), 70),
        (("azure:southeastasia", "gcp:southamerica-east1"), 330),
        (("azure:southeastasia", "azure:australiaeast"), 95),
        (("aws:ap-northeast-1", "gcp:southamerica-east1"), 260),
        (("aws:ap-northeast-1", "azure:australiaeast"), 110),
        (("gcp:southamerica-east1", "azure:australiaeast"), 310),
    )
}


def rtt_ms(a: Region, b: Region) -> float:
    """Round-trip time between two regions: measured for the table above, else estimated.

    The estimate is fibre at 200 km/ms over 1.5 times the great-circle distance, both ways.
    """
    known = _RTT_MS.get(frozenset((a.id, b.id)))
    if known is not None:
        return known
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    km = 2 * 6371 * math.asin(math.sqrt(h))
    return round(2 * 1.5 * km / 200 + 2, 1)
