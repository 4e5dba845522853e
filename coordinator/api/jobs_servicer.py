"""``edgeshard.v1.Jobs``: submit sharded batch jobs, watch them, stream their results."""

from __future__ import annotations

import logging

from coordinator.api import convert
from coordinator.jobs.model import JobProgress
from coordinator.jobs.service import JobService
from coordinator.jobs.submission import Submission
from edgeshard.rpc import guarded
from protos import codec, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)
DEFAULT_WATCH_INTERVAL_S = 0.5


class JobsServicer(fleet_pb2_grpc.JobsServicer):
    """Jobs RPCs over ``JobService``."""

    def __init__(self, jobs: JobService):
        self.jobs = jobs

    def _status(self, p: JobProgress) -> fleet_pb2.JobStatus:
        return convert.job_status(p, self.jobs.shares(p.job_id))

    @guard
    def Submit(self, request_iterator, context):
        submission = Submission()
        for i, part in enumerate(request_iterator):
            kind = part.WhichOneof("part")
            if kind == "header":
                submission.add_header(i, convert.job_request(part.header))
            elif kind == "items":
                batch = part.items
                submission.add_items(i, list(batch.ids), codec.decode_array(
                    f"items[{i}]", batch.datatype, list(batch.shape), batch.data))
            else:
                submission.refuse_empty(i)
        return self._status(self.jobs.submit(submission))

    @guard
    def GetJob(self, request, context):
        return self._status(self.jobs.get(request.job_id))

    @guard
    def ListJobs(self, request, context):
        return fleet_pb2.ListJobsResponse(jobs=[self._status(p) for p in self.jobs.list()])

    @guard
    def Cancel(self, request, context):
        return self._status(self.jobs.cancel(request.job_id))

    @guard
    def Watch(self, request, context):
        interval = request.interval_s if request.interval_s > 0 else DEFAULT_WATCH_INTERVAL_S
        for p in self.jobs.watch(request.job_id, interval, context.is_active):
            yield self._status(p)

    @guard
    def FetchResults(self, request, context):
        for row, provisional in self.jobs.results(request.job_id, request.after_seq,
                                                  request.follow, request.include_pending,
                                                  context.is_active):
            yield convert.result_record(row, provisional)
