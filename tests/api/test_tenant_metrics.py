"""`/metrics` per tenant: the slots each tenant's jobs hold, the units a capped tenant used today."""

from __future__ import annotations

from models.tenants import create_tenant
from tests.api.conftest import Api
from tests.api.test_metrics import scrape, value


def test_slots_in_use_are_counted_per_tenant(api: Api) -> None:
    create_tenant(api.session, "acme", daily_units=50.0)
    api.session.commit()
    api.limiter.limit = 10
    acme = [api.create({"prompt": f"p{i}", "tenant": "acme"}).get_json()["id"] for i in range(2)]
    own = api.create({"prompt": "mine"}).get_json()["id"]
    for job_id, slots in ((acme[0], 2), (acme[1], 1), (own, 2)):
        assert api.limiter.acquire(job_id, slots)
    metrics = scrape(api)
    assert value(metrics, "kling_tenant_slots_in_use", tenant="acme") == 3
    assert value(metrics, "kling_tenant_slots_in_use", tenant="default") == 2
    # Only a tenant with daily_units has its day's units counted (no Redis here: none spent).
    assert value(metrics, "kling_tenant_units_today", tenant="acme") == 0
    assert ("kling_tenant_units_today", ("tenant", "default")) not in metrics["kling_tenant_units_today"]
