"""Size presets: one word in the stack file sets instance classes, node counts and replicas.

A stack may still override any single value (``record:database.instanceClass`` ...); the
preset is the starting point the cost estimate in DEPLOYMENT.md is written against.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SizePreset:
    name: str
    node_instance_types: tuple[str, ...]
    node_min: int
    node_desired: int
    node_max: int
    db_instance_class: str
    db_storage_gb: int
    # RDS takes kB. The HNSW build of 1M x 384 vectors took 382 s with 8 GB on 2 cores; a
    # build that spills out of maintenance_work_mem is several times slower.
    maintenance_work_mem_kb: int
    cache_node_type: str
    cache_replicas: int
    api_replicas: int
    api_max_replicas: int
    worker_min_replicas: int
    worker_max_replicas: int


PRESETS: dict[str, SizePreset] = {
    "small": SizePreset(
        name="small",
        node_instance_types=("t3.large",),
        # Staging (small) is also the previews' cluster, and nothing adds nodes by itself (no
        # cluster autoscaler; EKS keeps the desired size it was created with). Five t3.large
        # hold the base stack, two live previews (each ≈ 2 vCPU requested: model server, API,
        # a busy worker) and the controllers, with one deploy's Jobs running:
        # tests/infra/test_cluster.py::test_staging_holds_its_base_and_two_previews.
        node_min=2,
        node_desired=5,
        node_max=6,
        db_instance_class="db.t4g.medium",
        db_storage_gb=50,
        maintenance_work_mem_kb=512 * 1024,
        cache_node_type="cache.t4g.small",
        cache_replicas=1,
        api_replicas=2,
        api_max_replicas=4,
        worker_min_replicas=0,
        worker_max_replicas=3,
    ),
    "medium": SizePreset(
        name="medium",
        node_instance_types=("m6i.xlarge",),
        node_min=3,
        node_desired=3,
        node_max=8,
        db_instance_class="db.r6g.large",
        db_storage_gb=200,
        maintenance_work_mem_kb=2 * 1024 * 1024,
        cache_node_type="cache.r7g.large",
        cache_replicas=1,
        api_replicas=3,
        api_max_replicas=10,
        worker_min_replicas=1,
        worker_max_replicas=8,
    ),
    "large": SizePreset(
        name="large",
        node_instance_types=("m6i.2xlarge",),
        node_min=3,
        node_desired=6,
        node_max=20,
        db_instance_class="db.r6g.2xlarge",
        db_storage_gb=1000,
        maintenance_work_mem_kb=8 * 1024 * 1024,
        cache_node_type="cache.r7g.xlarge",
        cache_replicas=2,
        api_replicas=4,
        api_max_replicas=30,
        worker_min_replicas=2,
        worker_max_replicas=24,
    ),
}
