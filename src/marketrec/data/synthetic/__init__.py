"""The synthetic marketplace: the embedded default world, with its ground truth.

Real-time marketplace logs are private, and public ones (RetailRocket) have neither item text
nor regions nor a ground truth to check a model against. This generator builds a world whose
*causes* are known, so every stage can be tested end to end and its failures explained:

* regions, each with a price multiplier; most items sell everywhere, some in a subset;
* a two-level category tree ("Home > Kitchen"), brands, and item titles, descriptions and
  tags whose words name the item's strongest latent traits, so content features carry signal;
* long-tail (lognormal) item popularity, items listed every day and a few delisted;
* users with latent tastes near one or two category centroids, a home region, demographics
  that hint at their taste (cold start), signing up every day and acting only afterwards;
* sessions (device, diurnal hours) with a view → click → add_to_cart → purchase funnel whose
  step probabilities grow with user–item affinity, and search sessions whose query names the
  searched sub-category and the user's taste;
* top-category trends that rise and fall over the days.

Volumes are calibrated to RetailRocket (2,664,312 views, 69,332 add-to-carts, 22,457
purchases from 1,407,580 visitors): add_to_cart/view ≈ 0.026, purchase/view ≈ 0.0084, about
1.9 views per visitor, most visitors seen in one short session and a heavy tail of active ones.
The event count therefore follows from the number of users (≈ 2.5 events per user).

Everything is vectorised with NumPy/Polars (loops run over days, categories, funnel steps or
fixed-size chunks, never over rows), and everything is drawn from one `PCG64(seed)`
generator in a fixed order, so a seed always gives identical Parquet content.

The package is cut by what each module owns, in the order a world is built: `config`
(every knob, validated), `vocabulary` (the fixed word lists), `world` (regions, centroids,
brand styles, price levels, trends), `catalogue` (items), `text` (titles, descriptions,
tags and queries from latent traits), `population` (users), `sessions` (sessions, views and
the funnel), `truth` (the ground truth and its files), `marketplace` (the entry points that
run the stages on one generator) and `vectorised` (time units, ids, sampling helpers).
"""

from marketrec.data.synthetic.config import SyntheticConfig
from marketrec.data.synthetic.marketplace import generate_marketplace, write_marketplace
from marketrec.data.synthetic.truth import GROUND_TRUTH_DIR as GROUND_TRUTH_DIR
from marketrec.data.synthetic.truth import GroundTruth

__all__ = [
    "GroundTruth",
    "SyntheticConfig",
    "generate_marketplace",
    "write_marketplace",
]
