"""Jobs: durable state in the database, workers that claim and run them."""

from evalhub.jobs.queue import Job, JobEvent, JobQueue, JobStatus, new_job_id
from evalhub.jobs.worker import Handler, JobCancelled, JobContext, JobDeferred, JobFailed, Worker

__all__ = [
    "Handler",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobDeferred",
    "JobEvent",
    "JobFailed",
    "JobQueue",
    "JobStatus",
    "Worker",
    "new_job_id",
]
