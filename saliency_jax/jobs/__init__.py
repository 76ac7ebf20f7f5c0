"""Dataset-scale batch jobs: saliency maps for a whole source, resumable, nothing lost, data parallel.

    from saliency_jax import load_model
    from saliency_jax.data import open_source
    from saliency_jax.jobs import run_batch_job, load_outputs

    summary = run_batch_job(open_source("photos/"), load_model(), "maps_out", method="smoothgrad",
                            targets="top1", batch_size=32, shard_size=1024, float16=True)
    print(summary)                      # images, errors, images/s
    out = load_outputs("maps_out")      # {"id": [N], "maps": [N,224,224], "predicted": [N], ...}

Run the same call again after a crash (or `kill -9`): it resumes after the last
complete shard, and the folder ends up exactly as an uninterrupted run leaves it.
One run writes a folder at a time (a lock); shards whose images changed since
are computed again, and a damaged shard is named (``recompute_damaged=True``
computes it again).
"""

from saliency_jax.jobs.runner import JobSummary, run_batch_job
from saliency_jax.jobs.step import StepOutput, fetch, make_step
from saliency_jax.jobs.store import (INDEX_COLUMNS, DamagedShard, JobError, JobLock, JobStore, ensure_writable,
                                    load_outputs, load_shard)

__all__ = [
    "DamagedShard",
    "INDEX_COLUMNS",
    "JobError",
    "JobLock",
    "JobStore",
    "JobSummary",
    "StepOutput",
    "ensure_writable",
    "fetch",
    "load_outputs",
    "load_shard",
    "make_step",
    "run_batch_job",
]
