"""The registry's store: resource verbs over SQL tables and a content-addressed artifact store.

Every mutation runs in one transaction that takes the model's row lock (PostgreSQL) or SQLite's
write lock before reading, so concurrent writers serialise and histories stay consistent.
Listeners see each mutation inside that transaction; evalhub writes its audit log through one.
The verbs live by resource: `model_store` (models and versions), `lineage_store`, `alias_store`,
`dataset_store`, over `store_base`.
"""

from __future__ import annotations

from registry.alias_store import AliasStore
from registry.dataset_store import check_jsonl
from registry.store_base import MutationListener


class RegistryStore(AliasStore):
    """Models, versions, lineage, aliases and datasets: every resource store in one."""


__all__ = ["MutationListener", "RegistryStore", "check_jsonl"]
