"""Per-tenant gauges from the limiters and the tenants' unit budgets (worker/tenancy.py):
`kling_tenant_slots_in_use{tenant}` and, for tenants with `daily_units`, `kling_tenant_units_today`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.services import Services

log = logging.getLogger(__name__)


class TenantCollector(Collector):
    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            tenancy = self._services().tenancy
            limits = tenancy.limits()
            used: dict[str, int] = dict.fromkeys(limits, 0)
            held = tenancy.holders()
            for job_id, tenant in tenancy.tenants_of(held).items():
                used[tenant] = used.get(tenant, 0) + held[job_id]
            units = {t: tenancy.units_today(t) for t, limit in limits.items() if limit.daily_units}
        except Exception as exc:  # noqa: BLE001  (a scrape reports what it can)
            log.warning("metrics: tenant gauges unavailable (%s)", type(exc).__name__)
            return
        slots = GaugeMetricFamily(
            "kling_tenant_slots_in_use", "Provider slots held by a tenant's jobs", labels=["tenant"]
        )
        for tenant in sorted(used):
            slots.add_metric([tenant], used[tenant])
        yield slots
        spent = GaugeMetricFamily(
            "kling_tenant_units_today", "Units a tenant with daily_units used today (UTC)", labels=["tenant"]
        )
        for tenant in sorted(units):
            spent.add_metric([tenant], units[tenant])
        yield spent


__all__ = ["TenantCollector"]
